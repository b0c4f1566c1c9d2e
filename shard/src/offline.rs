//! Offline messages (XEP-0160) and last activity (XEP-0012).
//!
//! A `normal` or `chat` message with a body, for an existing account with no
//! available resource, is stored with a `<delay/>` (XEP-0203) and handed to the next
//! resource that sends initial presence with a non-negative priority. Past
//! `OFFLINE_MESSAGES_PER_USER_MAX` the sender gets `resource-constraint`, as
//! ejabberd's and MongooseIM's default bounce policy does; a message for no account
//! gets `service-unavailable` (RFC 6121 section 8.5.2.2.1).

use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::BareJid;
use starling_wire::stanza::Stanza;

use crate::account;
use crate::blocking::DataKind;
use crate::core::Core;
use crate::delay::{now_us, stamp_message};
use crate::limits::OFFLINE_MESSAGES_PER_USER_MAX;

/// Whether an undeliverable message is worth storing (XEP-0160 section 3: not chat
/// states or receipts alone; XEP-0334 `no-store` is honoured).
pub(crate) fn storable(stanza: &Stanza<'_>) -> bool {
    let payload = stanza.payload();
    let body = contains(payload, b"<body") && !contains(payload, b"<no-store xmlns='urn:xmpp:hints'");
    body || contains(payload, b"<store xmlns='urn:xmpp:hints'")
}

/// Stores `stanza` for the offline account `to`, or answers its sender.
pub(crate) fn store(core: &Core, stanza: &Stanza<'_>, to: &str) {
    let Ok(user) = to.parse::<BareJid>() else { return };
    let sender = stanza.from.and_then(|f| f.value()).map(|f| f.into_owned()).unwrap_or_default();
    let domain = user.domain().to_owned();
    let mut stamped = Vec::with_capacity(stanza.bytes.len() + 96);
    stamp_message(stanza.bytes, &domain, now_us(), &mut stamped);
    let original = stanza.bytes.to_vec();
    let core = core.rc();
    crate::contain::spawn(core.clone(), "storing an offline message", async move {
        let outcome = match account::load(&core, &user).await {
            Ok(account) if account::blocks(&account.borrow(), &sender) => Err(StanzaErrorCondition::ServiceUnavailable),
            Ok(_) => push(&core, &user, stamped).await,
            Err(_) => Err(StanzaErrorCondition::InternalServerError),
        };
        if outcome.is_ok() {
            // Archived like a delivered message, by the recipient's preferences
            // (the account is still loaded here).
            if let Ok(stanza) = Stanza::parse(&original) {
                crate::archive::archive(&core, &stanza, user.as_str(), &sender);
            }
        }
        account::release(&core, user.as_str());
        if let Err(condition) = outcome {
            if let Ok(stanza) = Stanza::parse(&original) {
                crate::router::reply_error(&core, &stanza, condition);
            }
        }
    });
}

async fn push(core: &Core, user: &BareJid, stamped: Vec<u8>) -> Result<(), StanzaErrorCondition> {
    let owner = user.clone();
    let stored = core
        .shared
        .db
        .run_for(user.as_str(), move |store| {
            if store.credentials(&owner, starling_wire::sasl::scram::Hash::Sha256)?.is_none() {
                return Ok(None);
            }
            store.offline_push(&owner, &stamped, OFFLINE_MESSAGES_PER_USER_MAX).map(Some)
        })
        .await;
    match stored {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err(StanzaErrorCondition::ResourceConstraint),
        Ok(None) => Err(StanzaErrorCondition::ServiceUnavailable),
        Err(error) => {
            log::warn!("offline: storing a message for {user} failed: {error}");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// Takes the stored messages of `user`, as bytes to write to the client.
pub(crate) async fn take(core: &Core, user: &BareJid) -> Vec<u8> {
    let owner = user.clone();
    match core.shared.db.run_for(user.as_str(), move |store| store.offline_take(&owner)).await {
        Ok(messages) => messages.concat(),
        Err(error) => {
            log::warn!("offline: reading the messages of {user} failed: {error}");
            Vec::new()
        }
    }
}

/// Remembers when the account's last resource went away (XEP-0012 section 4).
pub(crate) fn record_last_activity(core: &Core, user: &BareJid) {
    let owner = user.clone();
    let seconds = (now_us() / 1_000_000).to_string();
    core.shared.db.submit_for(user.as_str(), "recording last activity", move |store| {
        store.set_data(&owner, DataKind::LastActivity, "", Some(seconds.as_bytes()))
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
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
