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

use crate::core::Core;
use crate::sessions::Session;

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

fn deliver_message(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let kind = stanza.message_type();
    if to.is_full() {
        if push_to_full(core, to.as_str(), stanza.bytes) {
            return;
        }
        // RFC 6121 section 8.5.3.2.1: no such resource.
        match kind {
            MessageType::Groupchat => return reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable),
            MessageType::Error => return,
            _ => {}
        }
    }
    let sessions = core.sessions.borrow();
    let candidates: Vec<&Session> =
        sessions.sessions(to.bare_str()).iter().filter(|s| s.available && s.priority >= 0).collect();
    // RFC 6121 section 8.5.2.
    let targets: Vec<&Session> = match kind {
        MessageType::Error => return,
        MessageType::Groupchat => Vec::new(),
        MessageType::Headline => candidates,
        MessageType::Normal | MessageType::Chat => {
            let top = candidates.iter().map(|s| s.priority).max();
            candidates.into_iter().filter(|s| Some(s.priority) == top).collect()
        }
    };
    if targets.is_empty() {
        drop(sessions);
        if kind != MessageType::Headline {
            // No offline storage yet: the sender learns the message was not delivered.
            reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable);
        }
        return;
    }
    let mailboxes: Vec<_> = targets.iter().map(|s| s.mailbox.clone()).collect();
    drop(sessions);
    let limit = core.limits().queued_bytes_per_connection_max;
    for mailbox in mailboxes {
        mailbox.push(stanza.bytes, limit);
    }
}

fn deliver_presence(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let Some(kind) = stanza.presence_type() else { return };
    if to.is_full() {
        push_to_full(core, to.as_str(), stanza.bytes);
        return;
    }
    match kind {
        // Probes are answered by the server once rosters exist; errors are dropped.
        PresenceType::Probe | PresenceType::Error => {}
        _ => {
            let sessions = core.sessions.borrow();
            let mailboxes: Vec<_> =
                sessions.sessions(to.bare_str()).iter().filter(|s| s.available).map(|s| s.mailbox.clone()).collect();
            drop(sessions);
            let limit = core.limits().queued_bytes_per_connection_max;
            for mailbox in mailboxes {
                mailbox.push(stanza.bytes, limit);
            }
        }
    }
}

fn deliver_iq(core: &Core, stanza: &Stanza<'_>, to: &JidRef<'_>) {
    let request = matches!(stanza.iq_type(), Some(IqType::Get | IqType::Set));
    if to.is_full() {
        if !push_to_full(core, to.as_str(), stanza.bytes) && request {
            reply_error(core, stanza, StanzaErrorCondition::ServiceUnavailable);
        }
    } else if request {
        // RFC 6121 section 8.5.2.1.3: the server answers on the account's behalf.
        crate::iq::answer_for_account(core, stanza, to.bare_str());
    }
}

/// Pushes to the session `full`; false if there is none.
fn push_to_full(core: &Core, full: &str, bytes: &[u8]) -> bool {
    let mailbox = core.sessions.borrow().session(full).map(|s| s.mailbox.clone());
    match mailbox {
        Some(mailbox) => {
            mailbox.push(bytes, core.limits().queued_bytes_per_connection_max);
            true
        }
        None => false,
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
