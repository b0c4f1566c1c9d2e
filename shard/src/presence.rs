//! Presence a client sends (RFC 6121 section 4): initial and unavailable presence
//! shared with the account's other resources, directed presence routed and
//! remembered, and the unavailable presence sent for a client that goes away.
//!
//! Rosters, subscriptions and probes arrive with the IM issue; until then presence
//! broadcast reaches the account's own resources and directed recipients only.

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::JidRef;
use starling_wire::stanza::{PresenceType, Stanza};

use crate::core::Core;
use crate::limits::DIRECTED_PRESENCE_MAX;
use crate::router::route;
use crate::session::{reply_here, State};

/// Handles a presence stanza from the client; `stamped` carries its `from`.
pub(crate) fn outbound(core: &Core, state: &mut State, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>, stamped: &[u8]) {
    let Some(kind) = stanza.presence_type() else {
        reply_here(state, stanza, StanzaErrorCondition::BadRequest);
        return;
    };
    match (to, kind) {
        (None, PresenceType::Available) => broadcast_available(core, state, stanza),
        (None, PresenceType::Unavailable) => go_unavailable(core, state, Some(stanza)),
        (None, _) => {}
        (Some(to), _) => {
            route(core, to.bare_str(), stamped);
            track_directed(state, to, kind);
        }
    }
}

/// The client is gone: if it was available, its other resources and the contacts it
/// sent directed presence to learn it is unavailable.
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
            tell_directed(core, state);
        }
        Some(_) => tell_directed(core, state),
    }
}

/// Initial (or updated) available presence: remember it, share it with the account's
/// other available resources, and on the first one show them to this client.
fn broadcast_available(core: &Core, state: &mut State, stanza: &Stanza<'_>) {
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
    tell_directed(core, state);
}

/// Sends `stanza` (or a bare unavailable presence) from this session to each other
/// available resource of the account; they all live on this core.
fn share_with_own_resources(core: &Core, state: &State, stanza: Option<&Stanza<'_>>) {
    let limit = core.limits().queued_bytes_per_connection_max;
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
        sibling.mailbox.push(&bytes, limit);
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
            cluster.route(node, &full, &bytes);
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
