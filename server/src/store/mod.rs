//! Storage backends. [`Storage`] is everything the node stores; the cores see only the
//! `Store` part (`starling_modules::Store`) through the DB thread pool, and the
//! admin thread uses the rest directly (it is not a core, so blocking is fine there).
//!
//! Schema files live next to the code (`sqlite.sql`) and are applied on start.

pub mod postgres;
pub mod sqlite;

use std::num::NonZeroU32;

use starling_modules::store::Store;
use starling_shard::db::StoreError;
use starling_wire::jid::BareJid;
use starling_wire::sasl::scram::{Credentials, Hash};

/// Both SCRAM credentials of one account, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountKeys {
    pub sha1: Credentials,
    pub sha256: Credentials,
}

impl AccountKeys {
    /// Derives both credentials from a password with fresh random salts (PBKDF2 twice:
    /// call off the cores).
    pub fn from_password(password: &str, iterations: NonZeroU32) -> AccountKeys {
        AccountKeys {
            sha1: Credentials::derive(Hash::Sha1, password, &random_salt(), iterations),
            sha256: Credentials::derive(Hash::Sha256, password, &random_salt(), iterations),
        }
    }

    /// Parses MongooseIM's serialised form (`==MULTI_SCRAM==,<iterations>,===SHA1===
    /// <salt>|<stored>|<server>,==SHA256==<salt>|<stored>|<server>`, base64 values), so
    /// load tests can import precomputed credentials without paying PBKDF2.
    pub fn from_mongooseim(serialised: &str) -> Option<AccountKeys> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rest = serialised.strip_prefix("==MULTI_SCRAM==,")?;
        let mut parts = rest.split(',');
        let iterations: NonZeroU32 = parts.next()?.parse().ok()?;
        let (mut sha1, mut sha256) = (None, None);
        for part in parts {
            let (hash, details) = if let Some(d) = part.strip_prefix("===SHA1===") {
                (Hash::Sha1, d)
            } else if let Some(d) = part.strip_prefix("==SHA256==") {
                (Hash::Sha256, d)
            } else {
                continue;
            };
            let mut fields = details.split('|');
            let salt = b64.decode(fields.next()?).ok()?;
            let stored_key = b64.decode(fields.next()?).ok()?;
            let server_key = b64.decode(fields.next()?).ok()?;
            if stored_key.len() != hash.output_bytes() || server_key.len() != hash.output_bytes() {
                return None;
            }
            let credentials = Credentials { hash, salt, iterations, stored_key, server_key };
            match hash {
                Hash::Sha1 => sha1 = Some(credentials),
                Hash::Sha256 => sha256 = Some(credentials),
            }
        }
        Some(AccountKeys { sha1: sha1?, sha256: sha256? })
    }

    /// The MongooseIM serialised form (see [`AccountKeys::from_mongooseim`]).
    pub fn to_mongooseim(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let part = |prefix: &str, c: &Credentials| {
            format!("{prefix}{}|{}|{}", b64.encode(&c.salt), b64.encode(&c.stored_key), b64.encode(&c.server_key))
        };
        format!(
            "==MULTI_SCRAM==,{},{},{}",
            self.sha1.iterations,
            part("===SHA1===", &self.sha1),
            part("==SHA256==", &self.sha256)
        )
    }
}

fn random_salt() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    // Invariant: the OS generator does not fail once the process runs.
    ring::rand::SystemRandom::new().fill(&mut salt).expect("system randomness");
    salt
}

/// Tables keyed by (server, username) whose rows go when the account is removed.
/// The unexpired tokens of a `fast_auth_token` row (`[(new), (current)]`), newest
/// first.
pub(crate) fn live_fast_tokens(
    row: Option<[(Option<String>, Option<i64>); 2]>,
    now: u64,
) -> Vec<starling_shard::db::FastToken> {
    row.into_iter()
        .flatten()
        .filter_map(|(id, expires)| {
            Some(starling_shard::db::FastToken { id: id?, expires: u64::try_from(expires?).ok()? })
        })
        .filter(|token| token.expires > now)
        .collect()
}

pub(crate) const ACCOUNT_TABLES: [&str; 9] = [
    "rosterusers",
    "roster_version",
    "blocking",
    "offline_message",
    "account_data",
    "mam_message",
    "pep_node",
    "pep_item",
    "fast_auth_token",
];

/// Everything the node stores, blocking.
pub trait Storage: Store {
    /// Creates the account; `false` if it exists.
    fn register(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError>;
    /// Creates many accounts in one transaction; `true` for each one created.
    fn register_many(&mut self, accounts: &[(BareJid, AccountKeys)]) -> Result<Vec<bool>, StoreError> {
        accounts.iter().map(|(user, keys)| self.register(user, keys)).collect()
    }
    /// Deletes the account; `false` if there was none.
    fn remove(&mut self, user: &BareJid) -> Result<bool, StoreError>;
    /// Replaces the keys; `false` if there is no such account.
    fn set_keys(&mut self, user: &BareJid, keys: &AccountKeys) -> Result<bool, StoreError>;
    fn exists(&mut self, user: &BareJid) -> Result<bool, StoreError>;
    /// Accounts of `domain`, as `user@domain`, sorted.
    fn list(&mut self, domain: &str) -> Result<Vec<String>, StoreError>;
    fn count(&mut self, domain: &str) -> Result<u64, StoreError>;
    /// A random secret named `name`, created on first use and then kept forever.
    fn secret(&mut self, name: &str) -> Result<Vec<u8>, StoreError>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use starling_modules::roster::{Roster, RosterItem, Subscription};
    use starling_modules::store::{
        AccountData, ArchivePage, ArchiveQuery, ArchiveTrim, ArchivedMessage, DataKind, PepItem,
    };
    use starling_shard::db::Registered;

    /// Accounts are created once, found, listed, re-keyed and removed; run by each
    /// backend's tests on a real database.
    pub(crate) fn account_lifecycle(store: &mut dyn Storage) {
        let alice: BareJid = "alice@localhost".parse().unwrap();
        let keys = AccountKeys::from_password("secret", NonZeroU32::new(16).unwrap());
        assert!(store.register(&alice, &keys).unwrap());
        assert!(!store.register(&alice, &keys).unwrap(), "second registration is refused");
        assert!(store.exists(&alice).unwrap());
        let stored = store.credentials(&alice, Hash::Sha256).unwrap().unwrap();
        assert!(stored.verify_password("secret"));
        assert_eq!(store.credentials(&alice, Hash::Sha1).unwrap().unwrap(), keys.sha1);
        assert_eq!(store.list("localhost").unwrap(), vec!["alice@localhost"]);
        assert_eq!(store.count("localhost").unwrap(), 1);
        let new_keys = AccountKeys::from_password("other", NonZeroU32::new(16).unwrap());
        assert!(store.set_keys(&alice, &new_keys).unwrap());
        assert!(store.credentials(&alice, Hash::Sha256).unwrap().unwrap().verify_password("other"));
        assert!(store.remove(&alice).unwrap());
        assert!(!store.remove(&alice).unwrap());
        assert!(store.credentials(&alice, Hash::Sha256).unwrap().is_none());
    }

    /// Rosters, block lists, offline messages, documents, the archive and PEP items
    /// survive reopening the store (`open`), removing the account removes them, and
    /// in-band registration honours the address limit; run by each backend.
    pub(crate) fn im_data(open: &dyn Fn() -> Box<dyn Storage>) {
        let alice: BareJid = "alice@localhost".parse().unwrap();
        let item = RosterItem {
            jid: "bob@localhost".into(),
            name: "Bob".into(),
            subscription: Subscription::Both,
            ask: true,
            visible: true,
            groups: vec!["Friends".into(), "Work".into()],
            ..RosterItem::default()
        };
        {
            let mut store = open();
            store.roster_put(&alice, &item, 3).unwrap();
            store.roster_put(&alice, &RosterItem { jid: "carol@localhost".into(), ..item.clone() }, 4).unwrap();
            store.roster_delete(&alice, "carol@localhost", 5).unwrap();
            store.block(&alice, &["spam@evil".into(), "evil".into()]).unwrap();
            store.unblock(&alice, &["evil".into()]).unwrap();
            assert!(store.offline_push(&alice, b"<message>1</message>", 2).unwrap());
            assert!(store.offline_push(&alice, b"<message>2</message>", 2).unwrap());
            assert!(!store.offline_push(&alice, b"<message>3</message>", 2).unwrap(), "full at the limit");
            store.set_data(&alice, DataKind::Vcard, "", Some(b"<vCard/>")).unwrap();
            for id in 1..=5u64 {
                let with = if id % 2 == 0 { "bob@localhost" } else { "carol@localhost" };
                let message =
                    ArchivedMessage { id, timestamp_us: id * 10, with: with.into(), stanza: vec![b'0' + id as u8] };
                store.archive_put(&alice, &message).unwrap();
            }
        }
        let mut store = open();
        let account = store.account(&alice).unwrap();
        assert_eq!(account.roster, Roster { version: 5, items: vec![item] });
        assert_eq!(account.blocked, vec!["spam@evil".to_owned()]);
        let stored = store.offline_peek(&alice, 10).unwrap();
        let stanzas: Vec<&[u8]> = stored.iter().map(|(_, s)| &s[..]).collect();
        assert_eq!(stanzas, vec![&b"<message>1</message>"[..], b"<message>2</message>"]);
        assert_eq!(store.offline_peek(&alice, 1).unwrap().len(), 1, "at most max");
        assert_eq!(store.offline_peek(&alice, 10).unwrap().len(), 2, "peeking keeps them");
        store.offline_delete(&alice, stored[0].0).unwrap();
        assert_eq!(store.offline_peek(&alice, 10).unwrap().len(), 1, "deleted up to an id");
        store.offline_delete(&alice, stored[1].0).unwrap();
        assert!(store.offline_peek(&alice, 10).unwrap().is_empty());
        // A batch of archive rows for two archives, in one transaction.
        let (bob, carol): (BareJid, BareJid) = ("bob@localhost".parse().unwrap(), "carol@localhost".parse().unwrap());
        let batch: Vec<(BareJid, ArchivedMessage)> = [(carol.clone(), 900u64), (bob.clone(), 901)]
            .into_iter()
            .map(|(user, id)| {
                (user, ArchivedMessage { id, timestamp_us: id * 10, with: "x@y".into(), stanza: b"<m/>".to_vec() })
            })
            .collect();
        store.archive_put_many(&batch).unwrap();
        store.archive_put_many(&batch).unwrap();
        let everything = ArchiveQuery { max: 100, ..ArchiveQuery::default() };
        assert_eq!(store.archive_query(&bob, &everything).unwrap().count, 1, "written once, duplicates ignored");
        assert_eq!(store.data(&alice, DataKind::Vcard, "").unwrap(), Some(b"<vCard/>".to_vec()));
        assert_eq!(store.data(&alice, DataKind::Private, "").unwrap(), None);

        let ids = |page: &ArchivePage| page.messages.iter().map(|m| m.id).collect::<Vec<_>>();
        let first = store.archive_query(&alice, &ArchiveQuery { max: 2, ..ArchiveQuery::default() }).unwrap();
        assert_eq!((ids(&first), first.complete, first.count), (vec![1, 2], false, 5));
        let next = store
            .archive_query(&alice, &ArchiveQuery { max: 2, after_id: Some(2), ..ArchiveQuery::default() })
            .unwrap();
        assert_eq!(ids(&next), vec![3, 4]);
        let last =
            store.archive_query(&alice, &ArchiveQuery { max: 2, from_end: true, ..ArchiveQuery::default() }).unwrap();
        assert_eq!((ids(&last), last.complete), (vec![4, 5], false));
        let with = ArchiveQuery { with: Some("bob@localhost".into()), max: 10, ..ArchiveQuery::default() };
        let bob = store.archive_query(&alice, &with).unwrap();
        assert_eq!((ids(&bob), bob.complete, bob.count), (vec![2, 4], true, 2));
        let window = ArchiveQuery { start_us: Some(20), end_us: Some(30), max: 10, ..ArchiveQuery::default() };
        assert_eq!(ids(&store.archive_query(&alice, &window).unwrap()), vec![2, 3]);

        let item = |id: &str| PepItem { node: "urn:x:mood".into(), id: id.into(), payload: id.as_bytes().to_vec() };
        assert!(store.pep_publish(&alice, &item("a"), "presence", 2).unwrap());
        assert!(store.pep_publish(&alice, &item("b"), "presence", 2).unwrap());
        assert!(store.pep_publish(&alice, &item("c"), "presence", 2).unwrap());
        assert!(!store.pep_publish(&alice, &item("d"), "open", 2).unwrap(), "another access model");
        let node = store.pep_items(&alice, "urn:x:mood", 10).unwrap().unwrap();
        assert_eq!(node.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["c", "b"], "newest first, 2 kept");
        assert!(store.pep_publish(&alice, &item("b"), "presence", 2).unwrap());
        assert_eq!(
            store.pep_items(&alice, "urn:x:mood", 1).unwrap().unwrap().items[0].id,
            "b",
            "republished is newest"
        );
        assert!(store.pep_retract(&alice, "urn:x:mood", "b").unwrap());
        assert_eq!(store.pep_nodes(&alice).unwrap(), vec![("urn:x:mood".to_owned(), "presence".to_owned())]);
        assert!(store.pep_delete(&alice, "urn:x:mood").unwrap());
        assert_eq!(store.pep_items(&alice, "urn:x:mood", 1).unwrap(), None);

        // The archive quota: the oldest beyond `keep` go, the newest stay.
        let carol_rows: Vec<(BareJid, ArchivedMessage)> = (1000..1010u64)
            .map(|id| {
                (carol.clone(), ArchivedMessage { id, timestamp_us: id, with: "x@y".into(), stanza: b"<m/>".to_vec() })
            })
            .collect();
        store.archive_put_many(&carol_rows).unwrap();
        assert_eq!(store.archive_trim(&carol, 4).unwrap(), ArchiveTrim { remaining: 4, deleted: 7 });
        let kept = store.archive_query(&carol, &everything).unwrap();
        assert_eq!(ids(&kept), vec![1006, 1007, 1008, 1009], "the newest are kept");
        assert_eq!(store.archive_trim(&carol, 10).unwrap(), ArchiveTrim { remaining: 4, deleted: 0 });

        let keys = AccountKeys::from_password("p", std::num::NonZeroU32::new(1).unwrap());
        let limit = Some(("192.0.2.1", std::time::Duration::from_secs(600)));
        let dave: BareJid = "dave@localhost".parse().unwrap();
        let created = store.create_account(&dave, (&keys.sha1, &keys.sha256), limit).unwrap();
        assert_eq!(created, Registered::Created);
        let erin: BareJid = "erin@localhost".parse().unwrap();
        assert_eq!(store.create_account(&erin, (&keys.sha1, &keys.sha256), limit).unwrap(), Registered::TooSoon);
        assert_eq!(store.create_account(&dave, (&keys.sha1, &keys.sha256), None).unwrap(), Registered::Exists);
        assert!(store.credentials(&dave, Hash::Sha256).unwrap().unwrap().verify_password("p"));
        store.register(&alice, &keys).unwrap();
        assert!(store.remove(&alice).unwrap());
        assert_eq!(store.account(&alice).unwrap(), AccountData::default(), "removal takes the data with it");
        assert_eq!(store.archive_query(&alice, &with).unwrap().count, 0);
    }

    /// MongooseIM's serialised SCRAM form round-trips and checks the right password.
    #[test]
    fn mongooseim_form_round_trips() {
        let keys = AccountKeys::from_password("secret", NonZeroU32::new(64).unwrap());
        let text = keys.to_mongooseim();
        assert!(text.starts_with("==MULTI_SCRAM==,64,===SHA1==="));
        let parsed = AccountKeys::from_mongooseim(&text).unwrap();
        assert_eq!(parsed, keys);
        assert!(parsed.sha256.verify_password("secret"));
        assert!(AccountKeys::from_mongooseim("==MULTI_SCRAM==,x").is_none());
        assert!(AccountKeys::from_mongooseim("plain").is_none());
    }
}
