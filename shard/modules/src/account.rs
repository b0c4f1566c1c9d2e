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
//! so the store never goes backwards. In a cluster each node that holds a session of
//! the account caches its own copy; a change made through another node arrives as
//! that module's event (`Module::on_event`) and is applied here too, so every node's
//! copy (and the roster version) stays the same.
//!
//! This cache is the modules' shared infrastructure, not a module: each part is read
//! and changed only by the module it belongs to (roster, blocking, mam).

use std::cell::RefCell;
use std::rc::Rc;

use starling_wire::jid::BareJid;

use starling_shard::db::StoreError;
use starling_shard::Core;

use crate::roster::{Roster, RosterItem};
use crate::store::AccountData;
use crate::Ctx;

/// What the home core keeps for one account.
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub roster: Roster,
    pub blocked: Vec<String>,
    /// XEP-0313 archiving preferences.
    pub archive: crate::mam::Preferences,
}

pub(crate) type Shared = Rc<RefCell<Account>>;

/// One cache slot.
pub(crate) enum Slot {
    /// A load is running; these are told when it ends.
    Loading(Vec<futures_channel::oneshot::Sender<()>>),
    Loaded(Shared),
}

/// The cached account, if loaded.
pub(crate) fn cached(ctx: &Ctx, bare: &str) -> Option<Shared> {
    match ctx.accounts.borrow().get(bare) {
        Some(Slot::Loaded(account)) => Some(account.clone()),
        _ => None,
    }
}

/// The account `bare`, from the cache or the store. Concurrent callers share one load.
pub(crate) async fn load(ctx: &Ctx, bare: &BareJid) -> Result<Shared, StoreError> {
    loop {
        let waiting = {
            let mut accounts = ctx.accounts.borrow_mut();
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
            None => return fetch(ctx, bare).await,
        }
    }
}

async fn fetch(ctx: &Ctx, bare: &BareJid) -> Result<Shared, StoreError> {
    let user = bare.clone();
    let result = ctx
        .db
        .run_for(bare.as_str(), move |store| {
            let data = store.account(&user)?;
            let preferences = store.data(&user, crate::store::DataKind::ArchivePreferences, "")?;
            Ok((data, preferences))
        })
        .await;
    let mut accounts = ctx.accounts.borrow_mut();
    let waiters = match accounts.remove(bare.as_str()) {
        Some(Slot::Loading(waiters)) => waiters,
        _ => Vec::new(),
    };
    let loaded = result.map(|(AccountData { roster, blocked }, preferences)| {
        let archive = preferences.and_then(|p| crate::mam::Preferences::from_bytes(&p)).unwrap_or_default();
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
pub(crate) fn release(core: &Core, ctx: &Ctx, bare: &str) {
    if !core.sessions_of(bare).is_empty() {
        return;
    }
    let mut accounts = ctx.accounts.borrow_mut();
    if let Some(Slot::Loaded(account)) = accounts.get(bare) {
        if Rc::strong_count(account) == 1 {
            accounts.remove(bare);
        }
    }
}

/// Stores `item` with the roster's current version, in order with the account's
/// other writes.
pub(crate) fn store_item(
    ctx: &Ctx,
    bare: &BareJid,
    item: RosterItem,
    version: u64,
) -> impl std::future::Future<Output = Result<(), StoreError>> {
    let user = bare.clone();
    ctx.db.run_for(bare.as_str(), move |store| store.roster_put(&user, &item, version))
}

/// Deletes the item `jid`, in order with the account's other writes.
pub(crate) fn delete_item(
    ctx: &Ctx,
    bare: &BareJid,
    jid: String,
    version: u64,
) -> impl std::future::Future<Output = Result<(), StoreError>> {
    let user = bare.clone();
    ctx.db.run_for(bare.as_str(), move |store| store.roster_delete(&user, &jid, version))
}
