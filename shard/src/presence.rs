//! Presence a client sends (RFC 6121 section 4): initial and unavailable presence
//! shared with the account's other resources and with the contacts subscribed to it,
//! probes to the contacts it is subscribed to, directed presence routed and
//! remembered, and the unavailable presence sent for a client that goes away.
//! Subscription presence is handed to `subscription.rs`.

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::JidRef;
use starling_wire::stanza::{PresenceType, Stanza};

use crate::account;
use crate::core::Core;
use crate::im::Outcome;
use crate::limits::DIRECTED_PRESENCE_MAX;
use crate::router::route;
use crate::session::{reply_here, State};

/// Handles a presence stanza from the client; `stamped` carries its `from`.
pub(crate) fn outbound(
    core: &Core,
    state: &mut State,
    stanza: &Stanza<'_>,
    to: Option<&JidRef<'_>>,
    stamped: &[u8],
) -> Outcome {
    let Some(kind) = stanza.presence_type() else {
        reply_here(state, stanza, StanzaErrorCondition::BadRequest);
        return Outcome::Done;
    };
    match (to, kind) {
        (None, PresenceType::Available) => return broadcast_available(core, state, stanza),
        (None, PresenceType::Unavailable) => go_unavailable(core, state, Some(stanza)),
        (None, _) => {}
        (
            Some(to),
            PresenceType::Subscribe | PresenceType::Subscribed | PresenceType::Unsubscribe | PresenceType::Unsubscribed,
        ) => return crate::subscription::outbound(core, state, stanza, to, kind),
        // Probes are the server's business (RFC 6121 section 4.3).
        (Some(_), PresenceType::Probe) => {}
        (Some(to), _) => {
            route(core, to.bare_str(), stamped);
            track_directed(state, to, kind);
        }
    }
    Outcome::Done
}

/// The client is gone: if it was available, its other resources, its subscribers and
/// the contacts it sent directed presence to learn it is unavailable.
pub(crate) fn session_ended(core: &Core, state: &mut State) {
    let session = core.sessions.borrow_mut().unbind(&state.jid, state.id);
    if let (Some(cluster), Some(_)) = (&core.cluster, &session) {
        cluster.publish(state.jid.as_str(), None);
    }
    match session {
        // Replaced by a newer session with the same full JID: that one speaks now.
        None => {}
        Some(session) if session.available => {
            share_with_own_resources(core, state, None);
            tell_subscribers(core, state, None);
            tell_directed(core, state);
        }
        Some(_) => tell_directed(core, state),
    }
    if core.sessions.borrow().sessions(state.jid.bare_str()).is_empty() {
        crate::offline::record_last_activity(core, &state.jid.to_bare());
    }
    account::release(core, state.jid.bare_str());
}

/// Initial (or updated) available presence: remember it, share it with the account's
/// other available resources and its subscribers; on the first one show this client
/// its siblings, probe its contacts, and hand it pending requests and offline messages.
fn broadcast_available(core: &Core, state: &mut State, stanza: &Stanza<'_>) -> Outcome {
    let priority = priority_of(stanza);
    let mut first = false;
    {
        let mut sessions = core.sessions.borrow_mut();
        if let Some(session) = sessions.session_mut(state.jid.as_str()) {
            first = !session.available;
            session.available = true;
            session.priority = priority;
            let mut stored = Vec::new();
            stanza.write_stamped(state.jid.as_str(), &mut stored);
            session.presence = Some(stored.into_boxed_slice());
            if let Some(cluster) = &core.cluster {
                cluster.publish(state.jid.as_str(), Some(session.entry()));
            }
        }
    }
    share_with_own_resources(core, state, Some(stanza));
    // RFC 6121 sections 4.2.2 and 4.4.2: the resource that sent it gets its own
    // presence too (an entity is implicitly subscribed to its own presence).
    stanza.write_addressed(state.jid.as_str(), state.jid.as_str(), &mut state.out);
    let notify_known = crate::pep::presence_caps(core, state, stanza);
    if first {
        // RFC 6121 section 4.2.2: the new resource learns about its siblings.
        let sessions = core.sessions.borrow();
        for sibling in sessions.sessions(state.jid.bare_str()) {
            if sibling.jid == state.jid || !sibling.available {
                continue;
            }
            if let Some(presence) = sibling.presence.as_deref().and_then(|p| Stanza::parse(p).ok()) {
                presence.write_addressed(sibling.jid.as_str(), state.jid.as_str(), &mut state.out);
            }
        }
    }
    let core = core.rc();
    let user = state.jid.to_bare();
    let full = state.jid.as_str().to_owned();
    let mut presence = Vec::with_capacity(stanza.bytes.len() + 64);
    stanza.write_stamped(&full, &mut presence);
    Outcome::Wait(Box::pin(async move {
        let account = match account::load(&core, &user).await {
            Ok(account) => account,
            Err(error) => {
                log::warn!("presence: cannot load {user}: {error}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let sources: Vec<String> = {
            let cached = account.borrow();
            if let Ok(stanza) = Stanza::parse(&presence) {
                for contact in cached.roster.presence_subscribers().filter(|c| !account::blocks(&cached, c)) {
                    let mut bytes = Vec::with_capacity(presence.len() + 32);
                    stanza.write_addressed(&full, contact, &mut bytes);
                    route(&core, contact, &bytes);
                }
            }
            if first {
                crate::subscription::pending_requests(&account, &full, &mut out);
            }
            cached.roster.presence_sources().map(str::to_owned).collect()
        };
        if notify_known {
            let notify = core.sessions.borrow().session(&full).and_then(|s| s.notify.clone());
            if let Some(notify) = notify.filter(|n| !n.is_empty()) {
                crate::pep::send_last_items(&core, &full, &user, sources.clone(), notify);
            }
        }
        if !first {
            return out;
        }
        // RFC 6121 section 4.2.2: probes go from the bare JID.
        for contact in &sources {
            crate::subscription::send(&core, user.as_str(), contact, "probe");
        }
        if priority >= 0 {
            out.extend_from_slice(&crate::offline::take(&core, &user).await);
        }
        out
    }))
}

/// Sends the current presence of every available resource of `user` to `contact`
/// (a bare or full JID): after a subscription is approved, or to answer a probe.
pub(crate) fn send_current_to(core: &Core, user: &str, contact: &str) {
    let presences: Vec<(String, Vec<u8>)> = core
        .sessions
        .borrow()
        .sessions(user)
        .iter()
        .filter(|s| s.available)
        .filter_map(|s| {
            let stanza = Stanza::parse(s.presence.as_deref()?).ok()?;
            let mut bytes = Vec::new();
            stanza.write_addressed(s.jid.as_str(), contact, &mut bytes);
            Some((s.jid.as_str().to_owned(), bytes))
        })
        .collect();
    let bare = contact.split('/').next().unwrap_or(contact);
    for (_, bytes) in presences {
        route(core, bare, &bytes);
    }
}

/// Sends unavailable presence from every available resource of `user` to `contact`:
/// after a subscription is cancelled, or when the contact is blocked.
pub(crate) fn send_unavailable_to(core: &Core, user: &str, contact: &str) {
    let resources: Vec<String> = core
        .sessions
        .borrow()
        .sessions(user)
        .iter()
        .filter(|s| s.available)
        .map(|s| s.jid.as_str().to_owned())
        .collect();
    let bare = contact.split('/').next().unwrap_or(contact);
    for full in resources {
        let mut bytes = Vec::new();
        unavailable(&full, contact, &mut bytes);
        route(core, bare, &bytes);
    }
}

/// A probe reached `to` (an account homed here) from `prober`: answered with the
/// current presence when the prober is subscribed (RFC 6121 section 4.3.2). An
/// account with no session is not loaded, and then nothing is sent.
pub(crate) fn answer_probe(core: &Core, to: &JidRef<'_>, prober: &str) {
    let Some(account) = account::cached(core, to.bare_str()) else { return };
    let prober_bare = prober.split('/').next().unwrap_or(prober);
    let subscribed = account.borrow().roster.item(prober_bare).is_some_and(|i| i.subscription.from());
    if subscribed && !account::blocks(&account.borrow(), prober) {
        send_current_to(core, to.bare_str(), prober);
    }
}

/// Tells the contacts subscribed to the account the session's new presence
/// (`stanza`, or unavailable), from the cached roster.
fn tell_subscribers(core: &Core, state: &State, stanza: Option<&Stanza<'_>>) {
    let Some(account) = account::cached(core, state.jid.bare_str()) else { return };
    let cached = account.borrow();
    for contact in cached.roster.presence_subscribers().filter(|c| !account::blocks(&cached, c)) {
        let mut bytes = Vec::new();
        match stanza {
            Some(stanza) => stanza.write_addressed(state.jid.as_str(), contact, &mut bytes),
            None => unavailable(state.jid.as_str(), contact, &mut bytes),
        }
        route(core, contact, &bytes);
    }
}

fn go_unavailable(core: &Core, state: &mut State, stanza: Option<&Stanza<'_>>) {
    {
        let mut sessions = core.sessions.borrow_mut();
        if let Some(session) = sessions.session_mut(state.jid.as_str()) {
            session.available = false;
            session.presence = None;
            if let Some(cluster) = &core.cluster {
                cluster.publish(state.jid.as_str(), Some(session.entry()));
            }
        }
    }
    share_with_own_resources(core, state, stanza);
    tell_subscribers(core, state, stanza);
    tell_directed(core, state);
}

/// Sends `stanza` (or a bare unavailable presence) from this session to each other
/// available resource of the account; they all live on this core.
fn share_with_own_resources(core: &Core, state: &State, stanza: Option<&Stanza<'_>>) {
    let sessions = core.sessions.borrow();
    for sibling in sessions.sessions(state.jid.bare_str()) {
        if sibling.jid == state.jid || !sibling.available {
            continue;
        }
        let mut bytes = Vec::new();
        match stanza {
            Some(stanza) => stanza.write_addressed(state.jid.as_str(), sibling.jid.as_str(), &mut bytes),
            None => unavailable(state.jid.as_str(), sibling.jid.as_str(), &mut bytes),
        }
        core.push(&sibling.mailbox, &bytes);
    }
    drop(sessions);
    // Resources of the same account on other nodes.
    if let Some(cluster) = &core.cluster {
        let remote: Vec<(u16, Box<str>)> = cluster
            .replica
            .borrow()
            .store
            .sessions(state.jid.bare_str())
            .iter()
            .filter(|s| s.entry.available && &*s.full != state.jid.as_str())
            .map(|s| (s.owner.node_num, s.full.clone()))
            .collect();
        for (node, full) in remote {
            let mut bytes = Vec::new();
            match stanza {
                Some(stanza) => stanza.write_addressed(state.jid.as_str(), &full, &mut bytes),
                None => unavailable(state.jid.as_str(), &full, &mut bytes),
            }
            cluster.route(core, node, &full, &bytes);
        }
    }
}

/// Sends unavailable presence to every directed-presence recipient and forgets them.
fn tell_directed(core: &Core, state: &mut State) {
    for recipient in std::mem::take(&mut state.directed) {
        let mut bytes = Vec::new();
        unavailable(state.jid.as_str(), &recipient, &mut bytes);
        let bare = recipient.split('/').next().unwrap_or(&recipient);
        route(core, bare, &bytes);
    }
}

fn track_directed(state: &mut State, to: &JidRef<'_>, kind: PresenceType) {
    let to = to.as_str();
    match kind {
        PresenceType::Available
            if !state.directed.iter().any(|d| &**d == to) && state.directed.len() < DIRECTED_PRESENCE_MAX =>
        {
            state.directed.push(to.into());
        }
        PresenceType::Unavailable => state.directed.retain(|d| &**d != to),
        _ => {}
    }
}

fn unavailable(from: &str, to: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<presence type='unavailable'");
    starling_wire::stanza::write_attribute(out, "from", from);
    starling_wire::stanza::write_attribute(out, "to", to);
    out.extend_from_slice(b"/>");
}

/// The `<priority/>` of a presence (RFC 6121 section 4.7.2.3), 0 when absent or invalid.
fn priority_of(stanza: &Stanza<'_>) -> i8 {
    let payload = stanza.payload();
    let Some(start) = memchr_find(payload, b"<priority>") else { return 0 };
    let rest = &payload[start + 10..];
    let end = memchr_find(rest, b"</priority>").unwrap_or(0);
    std::str::from_utf8(&rest[..end]).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
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
