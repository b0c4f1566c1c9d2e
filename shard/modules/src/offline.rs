//! `mod_offline`: offline messages (XEP-0160).
//!
//! ```text
//!  delivery decided Store (no resource takes it) --> stored with <delay/> (XEP-0203)
//!       full: resource-constraint to the sender; storage fails: internal-server-error
//!  initial presence, priority >= 0 --> batches of OFFLINE_BATCH: push to the session,
//!       wait until the socket took them, then delete them from storage
//! ```
//! A message leaves storage only after it was written to its client: if the session
//! ends first, it stays stored and comes at the next login. Past
//! `max_user_offline_messages` the sender gets `resource-constraint`, as ejabberd's
//! and MongooseIM's default bounce policy does.

use std::rc::Rc;

use starling_shard::delivery::Decision;
use starling_shard::module::{Delivery, Flow, Module, Sender};
use starling_shard::{Core, SessionId};
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, JidRef};
use starling_wire::stanza::{PresenceType, Stanza, StanzaKind};

use crate::delay::{now_us, stamp_message};
use crate::{Ctx, OfflineConfig};

/// Stored messages handed to a client per round (pushed, written, then deleted).
pub const OFFLINE_BATCH: usize = 50;

pub(crate) const SERVER_FEATURES: &[&str] = &["msgoffline"];

/// The offline module of one core.
pub struct Offline {
    ctx: Rc<Ctx>,
    config: OfflineConfig,
}

impl Offline {
    pub fn new(ctx: Rc<Ctx>, config: OfflineConfig) -> Offline {
        Offline { ctx, config }
    }
}

impl Module for Offline {
    fn name(&self) -> &'static str {
        "mod_offline"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    /// The first available presence with a non-negative priority (RFC 6121 section
    /// 4.7.2.3) starts the delivery of stored messages to that session.
    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        if stanza.kind != StanzaKind::Presence
            || to.is_some()
            || stanza.presence_type() != Some(PresenceType::Available)
        {
            return Flow::Continue;
        }
        let first = core.sessions_of(sender.jid.bare_str()).iter().any(|s| s.id() == sender.session && !s.available());
        if first && crate::presence::priority_of(stanza) >= 0 {
            let task = deliver_stored(
                core.handle(),
                self.ctx.clone(),
                sender.jid.to_bare(),
                sender.jid.as_str().into(),
                sender.session,
            );
            core.spawn("delivering offline messages", task);
        }
        Flow::Continue
    }

    fn on_deliver(&self, core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        if delivery.decision != Decision::Store || delivery.stanza.kind != StanzaKind::Message {
            return Flow::Continue;
        }
        if storable(delivery.stanza) {
            self.store(core, delivery.stanza, delivery.to.bare_str());
        }
        // XEP-0160 section 3: chat states and receipts alone are not kept; dropping
        // them is what section 8.5.2.2.1 allows.
        Flow::Stop
    }
}

/// Whether an undeliverable message is worth storing (XEP-0160 section 3: not chat
/// states or receipts alone; XEP-0334 `no-store` is honoured).
pub(crate) fn storable(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let body = crate::contains(payload, b"<body") && !crate::contains(payload, b"<no-store xmlns='urn:xmpp:hints'");
    body || crate::contains(payload, b"<store xmlns='urn:xmpp:hints'")
}

impl Offline {
    /// Stores `stanza` for the offline account `to`, or answers its sender.
    fn store(&self, core: &Core, stanza: &Stanza<'_>, to: &str) {
        let Ok(user) = to.parse::<BareJid>() else { return };
        let mut stamped = Vec::with_capacity(stanza.bytes.len() + 96);
        stamp_message(stanza.bytes, user.domain(), now_us(), &mut stamped);
        let original = stanza.bytes.to_vec();
        let max = self.config.max_user_offline_messages;
        let owner = user.clone();
        let stored = self.ctx.db.run_for(user.as_str(), move |store| {
            if store.credentials(&owner, starling_wire::sasl::scram::Hash::Sha256)?.is_none() {
                return Ok(None);
            }
            store.offline_push(&owner, &stamped, max).map(Some)
        });
        let task_core = core.handle();
        core.spawn("storing an offline message", async move {
            let outcome = match stored.await {
                Ok(Some(true)) => {
                    task_core.count("offline_messages_stored", 1);
                    return;
                }
                Ok(Some(false)) => StanzaErrorCondition::ResourceConstraint,
                Ok(None) => StanzaErrorCondition::ServiceUnavailable,
                Err(error) => {
                    log::warn!("offline: storing a message for {user} failed: {error}");
                    StanzaErrorCondition::InternalServerError
                }
            };
            // Not stored: its sender is told (never only a log line), and it is counted.
            task_core.count("offline_messages_refused", 1);
            if let Ok(stanza) = Stanza::parse(&original) {
                task_core.reply_error(&stanza, outcome);
            }
        });
    }
}

/// Hands `user`'s stored messages to the session `full` in batches; each batch is
/// deleted only once the socket took it.
async fn deliver_stored(core: Rc<Core>, ctx: Rc<Ctx>, user: BareJid, full: Box<str>, session: SessionId) {
    loop {
        let owner = user.clone();
        let batch = match ctx.db.run_for(user.as_str(), move |store| store.offline_peek(&owner, OFFLINE_BATCH)).await {
            Ok(batch) => batch,
            Err(error) => {
                log::warn!("offline: reading the messages of {user} failed: {error}");
                return;
            }
        };
        let Some(&(last, _)) = batch.last() else { return };
        let more = batch.len() == OFFLINE_BATCH;
        for (_, stanza) in &batch {
            if !core.push_raw(session, &full, stanza) {
                return;
            }
        }
        if !core.written(session, &full).await {
            // The session ended before its client got them: they stay stored.
            return;
        }
        let owner = user.clone();
        if let Err(error) = ctx.db.run_for(user.as_str(), move |store| store.offline_delete(&owner, last)).await {
            log::warn!("offline: deleting delivered messages of {user} failed (they may come again): {error}");
            return;
        }
        if !more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages with a body are stored; chat states alone and `no-store` are not.
    #[test]
    fn stores_only_messages_worth_keeping() {
        let cases: [(&[u8], bool); 4] = [
            (b"<message type='chat'><body>hi</body></message>", true),
            (b"<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>", false),
            (b"<message><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>", false),
            (b"<message><store xmlns='urn:xmpp:hints'/></message>", true),
        ];
        for (bytes, expected) in cases {
            assert_eq!(storable(&Stanza::parse(bytes).unwrap()), expected, "{}", String::from_utf8_lossy(bytes));
        }
    }
}
