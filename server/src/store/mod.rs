//! Storage backends. [`Storage`] is everything the node stores; the cores see only the
//! `Store` part (`starling_shard::blocking::Store`) through the DB thread pool, and the
//! admin thread uses the rest directly (it is not a core, so blocking is fine there).
//!
//! Schema files live next to the code (`sqlite.sql`) and are applied on start.

pub mod postgres;
pub mod sqlite;

use std::num::NonZeroU32;

use starling_shard::blocking::{Store, StoreError};
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
