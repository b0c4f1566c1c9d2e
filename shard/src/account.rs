//! The IM state of the accounts homed on this core (roster and block list), loaded
//! from the store when an account's first session binds or a stanza for an offline
//! account needs it, and dropped when nothing uses it any more.
//!
//! ```text
//!   load(bare) --miss--> Loading (later callers wait) --DB thread--> Loaded(Rc<Account>)
//!   change: mutate the cached Account, then write through run_for(bare) (ordered per account)
//!   release(bare): no session and no other holder --> evicted
//! ```
//! The cache is the truth while it holds an account: every change is applied to it
//! synchronously on the core and queued to the account's DB thread in the same order,
//! so the store never goes backwards. In a cluster each node caches its own copy; a
//! change made through another node is seen here when the account is next loaded.

use std::cell::RefCell;
use std::rc::Rc;

use starling_wire::jid::BareJid;

use crate::blocking::{AccountData, StoreError};
use crate::core::Core;
use crate::roster::{Roster, RosterItem};

/// What the home core keeps for one account.
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub roster: Roster,
    pub blocked: Vec<String>,
    /// XEP-0313 archiving preferences.
    pub archive: crate::archive::Preferences,
}

pub(crate) type Shared = Rc<RefCell<Account>>;

/// One cache slot.
pub(crate) enum Slot {
    /// A load is running; these are told when it ends.
    Loading(Vec<futures_channel::oneshot::Sender<()>>),
    Loaded(Shared),
}

/// The cached account, if loaded.
pub(crate) fn cached(core: &Core, bare: &str) -> Option<Shared> {
    match core.accounts.borrow().get(bare) {
        Some(Slot::Loaded(account)) => Some(account.clone()),
        _ => None,
    }
}

/// The account `bare`, from the cache or the store. Concurrent callers share one load.
pub(crate) async fn load(core: &Core, bare: &BareJid) -> Result<Shared, StoreError> {
    loop {
        let waiting = {
            let mut accounts = core.accounts.borrow_mut();
            match accounts.get_mut(bare.as_str()) {
                Some(Slot::Loaded(account)) => return Ok(account.clone()),
                Some(Slot::Loading(waiters)) => {
                    let (tell, told) = futures_channel::oneshot::channel();
                    waiters.push(tell);
                    Some(told)
                }
                None => {
                    accounts.insert(bare.as_str().into(), Slot::Loading(Vec::new()));
                    None
                }
            }
        };
        match waiting {
            // Loaded or failed meanwhile: look again.
            Some(told) => {
                let _ = told.await;
            }
            None => return fetch(core, bare).await,
        }
    }
}

async fn fetch(core: &Core, bare: &BareJid) -> Result<Shared, StoreError> {
    let user = bare.clone();
    let result = core
        .shared
        .db
        .run_for(bare.as_str(), move |store| {
            let data = store.account(&user)?;
            let preferences = store.data(&user, crate::blocking::DataKind::ArchivePreferences, "")?;
            Ok((data, preferences))
        })
        .await;
    let mut accounts = core.accounts.borrow_mut();
    let waiters = match accounts.remove(bare.as_str()) {
        Some(Slot::Loading(waiters)) => waiters,
        _ => Vec::new(),
    };
    let loaded = result.map(|(AccountData { roster, blocked }, preferences)| {
        let archive = preferences.and_then(|p| crate::archive::Preferences::from_bytes(&p)).unwrap_or_default();
        Rc::new(RefCell::new(Account { roster, blocked, archive }))
    });
    if let Ok(account) = &loaded {
        accounts.insert(bare.as_str().into(), Slot::Loaded(account.clone()));
    }
    drop(accounts);
    for waiter in waiters {
        let _ = waiter.send(());
    }
    loaded
}

/// Drops the cached account `bare` when no session of it is bound and nobody else
/// holds it. Call after the last use (a session's end, a finished background task).
pub(crate) fn release(core: &Core, bare: &str) {
    if !core.sessions.borrow().sessions(bare).is_empty() {
        return;
    }
    let mut accounts = core.accounts.borrow_mut();
    if let Some(Slot::Loaded(account)) = accounts.get(bare) {
        if Rc::strong_count(account) == 1 {
            accounts.remove(bare);
        }
    }
}

/// Stores `item` with the roster's current version, in order with the account's
/// other writes.
pub(crate) fn store_item(
    core: &Core,
    bare: &BareJid,
    item: RosterItem,
    version: u64,
) -> impl std::future::Future<Output = Result<(), StoreError>> {
    let user = bare.clone();
    core.shared.db.run_for(bare.as_str(), move |store| store.roster_put(&user, &item, version))
}

/// Deletes the item `jid`, in order with the account's other writes.
pub(crate) fn delete_item(
    core: &Core,
    bare: &BareJid,
    jid: String,
    version: u64,
) -> impl std::future::Future<Output = Result<(), StoreError>> {
    let user = bare.clone();
    core.shared.db.run_for(bare.as_str(), move |store| store.roster_delete(&user, &jid, version))
}

/// Is `sender` (a full or bare JID, or a domain) blocked by this account (XEP-0191
/// section 3.4 matching: full JID, bare JID, domain)?
pub(crate) fn blocks(account: &Account, sender: &str) -> bool {
    if account.blocked.is_empty() {
        return false;
    }
    let bare = sender.split('/').next().unwrap_or(sender);
    let domain = bare.rsplit('@').next().unwrap_or(bare);
    account.blocked.iter().any(|b| b == sender || b == bare || b == domain)
}

/// Does the account `bare` (if loaded here) block `sender`? An account being changed
/// at this moment counts as not blocking.
pub(crate) fn blocks_sender(core: &Core, bare: &str, sender: &str) -> bool {
    cached(core, bare).is_some_and(|account| account.try_borrow().is_ok_and(|a| blocks(&a, sender)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocking matches a full JID, its bare JID, or its domain, and nothing else.
    #[test]
    fn block_matching() {
        let account = Account { blocked: vec!["spam@evil".into(), "bad.example".into()], ..Account::default() };
        assert!(blocks(&account, "spam@evil/phone"));
        assert!(blocks(&account, "spam@evil"));
        assert!(blocks(&account, "anyone@bad.example/r"));
        assert!(!blocks(&account, "friend@evil"));
        assert!(!blocks(&Account::default(), "spam@evil"));
    }
}
