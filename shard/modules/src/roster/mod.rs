//! `mod_roster`: rosters (RFC 6121 section 2) with versioning (XEP-0237): the
//! client's roster get and set, pushes to the resources that asked for the roster,
//! on every node, and the account cache every IM module reads the roster from.
//!
//! ```text
//!   roster get --> INTERESTED flag on the session, roster from the account cache
//!   roster set --> cache (version + 1) --> push to interested resources (any node)
//!              --> store (in order per account) --> event to the other nodes, which
//!                  apply it to their copy (same version everywhere) --> result
//! ```
//! The model, the subscription state machine and the XML are in `model.rs` (pure).

pub mod model;

use std::rc::Rc;

use starling_shard::module::{Background, Iq, IqRoute, IqScope, Module, Reply};
use starling_shard::{Core, SessionId};
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, FullJid};
use starling_wire::stanza::IqType;

pub use model::{Roster, RosterItem, RosterSet, Subscription, Transition, NS_ROSTER};

use crate::account::{self, Shared};
use crate::{flags, Ctx, RosterConfig};

/// Contacts one roster holds, counting contacts known only by a pending subscription
/// request, so a flood of requests is bounded too. Beyond it a roster set gets
/// `resource-constraint` and new requests are dropped. Cost: ~150 B per cached item.
pub const ROSTER_ITEMS_MAX: usize = 2000;

const NAME: &str = "mod_roster";

/// The roster module of one core.
pub struct RosterModule {
    ctx: Rc<Ctx>,
    config: RosterConfig,
}

impl RosterModule {
    pub fn new(ctx: Rc<Ctx>, config: RosterConfig) -> RosterModule {
        RosterModule { ctx, config }
    }
}

const IQS: &[IqRoute] = &[IqRoute { namespace: NS_ROSTER, element: "query", scopes: &[IqScope::OwnAccount] }];

impl Module for RosterModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn stream_features(&self) -> String {
        if self.config.versioning {
            "<ver xmlns='urn:xmpp:features:rosterver'/>".to_owned()
        } else {
            String::new()
        }
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        let Ok(user) = iq.account.parse::<BareJid>() else { return iq.error(StanzaErrorCondition::BadRequest) };
        match iq.kind {
            IqType::Get => {
                // RFC 6121 section 2.1.6: from now on this resource gets pushes.
                core.set_session_flag(iq.requester, flags::ROSTER_INTERESTED, true);
                let ver = self.config.versioning.then(|| iq.child.attribute("ver").map(str::to_owned)).flatten();
                let ctx = self.ctx.clone();
                let request = iq.request();
                Reply::Later(Box::pin(async move {
                    let account = match account::load(&ctx, &user).await {
                        Ok(account) => account,
                        Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
                    };
                    let account = account.borrow();
                    // XEP-0237 section 2.4: an up-to-date client gets an empty result.
                    if ver.as_deref() == Some(account.roster.version.to_string().as_str()) {
                        return request.result(b"");
                    }
                    let mut query = Vec::with_capacity(64 + account.roster.items.len() * 96);
                    model::write_query(&account.roster, &mut query);
                    request.result(&query)
                }))
            }
            _ => match model::parse_set(iq.child, user.as_str()) {
                Ok(change) => self.set(core, user, iq, change),
                Err(condition) => iq.error(condition),
            },
        }
    }

    fn on_session_open(&self, _core: &Core, jid: &FullJid, _session: SessionId) -> Option<Background> {
        let ctx = self.ctx.clone();
        let user = jid.to_bare();
        Some(Box::pin(async move {
            // A failure is retried by the first request that needs the account.
            if let Err(error) = account::load(&ctx, &user).await {
                log::warn!("roster: cannot load the account of {user}: {error}");
            }
        }))
    }

    fn on_session_close(&self, core: &Core, jid: &FullJid, _session: SessionId, _was_available: bool) {
        account::release(core, &self.ctx, jid.bare_str());
    }

    fn prepare(&self, _core: &Core, account: &str) -> Option<Background> {
        let ctx = self.ctx.clone();
        let user = account.parse::<BareJid>().ok()?;
        Some(Box::pin(async move {
            let _ = account::load(&ctx, &user).await;
        }))
    }

    fn release(&self, core: &Core, account: &str) {
        account::release(core, &self.ctx, account);
    }

    fn on_event(&self, _core: &Core, account: &str, payload: &[u8]) {
        let Some(cached) = account::cached(&self.ctx, account) else { return };
        let Some((item, removed, version)) = model::decode_change(payload) else {
            log::warn!("roster: a malformed change for {account} from another node");
            return;
        };
        apply_remote(&mut cached.borrow_mut().roster, item, removed, version);
    }
}

impl RosterModule {
    fn set(&self, core: &Core, user: BareJid, iq: &Iq<'_>, change: RosterSet) -> Reply {
        let ctx = self.ctx.clone();
        let core = core.handle();
        let request = iq.request();
        Reply::Later(Box::pin(async move {
            let account = match account::load(&ctx, &user).await {
                Ok(account) => account,
                Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
            };
            let write = match apply_set(&core, &ctx, &user, &account, change) {
                Ok(write) => write,
                Err(condition) => return request.error(condition),
            };
            match write.await {
                Ok(()) => request.result(b""),
                Err(error) => {
                    log::warn!("roster: storing a change of {user} failed: {error}");
                    request.error(StanzaErrorCondition::InternalServerError)
                }
            }
        }))
    }
}

type Write = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), starling_shard::db::StoreError>>>>;

/// Applies a roster set to the cached roster, pushes and announces it, and returns the
/// store write.
fn apply_set(
    core: &Core,
    ctx: &Ctx,
    user: &BareJid,
    account: &Shared,
    change: RosterSet,
) -> Result<Write, StanzaErrorCondition> {
    let mut cached = account.borrow_mut();
    let roster = &mut cached.roster;
    match change {
        RosterSet::Update { jid, name, groups } => {
            if roster.item(&jid).is_none() && roster.items.len() >= ROSTER_ITEMS_MAX {
                return Err(StanzaErrorCondition::ResourceConstraint);
            }
            roster.version = roster.version.saturating_add(1);
            let version = roster.version;
            let item = roster.entry(&jid);
            item.name = name;
            item.groups = groups;
            item.visible = true;
            let item = item.clone();
            drop(cached);
            changed(core, user, &item, false, version);
            Ok(Box::pin(account::store_item(ctx, user, item, version)))
        }
        RosterSet::Remove { jid } => {
            let index = roster.items.iter().position(|i| i.jid == jid && i.visible);
            let Some(index) = index else { return Err(StanzaErrorCondition::ItemNotFound) };
            let item = roster.items.remove(index);
            roster.version = roster.version.saturating_add(1);
            let version = roster.version;
            drop(cached);
            // RFC 6121 section 2.5.2: removing a contact cancels both subscriptions.
            if item.subscription.to() || item.ask {
                crate::subscription::send(core, user.as_str(), &item.jid, "unsubscribe");
            }
            if item.subscription.from() || item.pending_in {
                crate::subscription::send(core, user.as_str(), &item.jid, "unsubscribed");
            }
            changed(core, user, &item, true, version);
            Ok(Box::pin(account::delete_item(ctx, user, item.jid, version)))
        }
    }
}

/// After a roster item changed in the cache: a push to every interested resource of
/// the account (on any node), and the change to the other nodes' caches.
pub(crate) fn changed(core: &Core, user: &BareJid, item: &RosterItem, removed: bool, version: u64) {
    if item.visible {
        for resource in core.resources(user.as_str()).iter().filter(|r| r.flags.has(flags::ROSTER_INTERESTED)) {
            let mut push = Vec::with_capacity(256);
            let id = format!("push{}", core.next_id());
            model::write_push(item, removed, version, &resource.full, &id, &mut push);
            core.push_to(resource, &push);
        }
    }
    core.send_event(NAME, user.as_str(), model::encode_change(item, removed, version));
}

/// A change made on another node, applied to this node's copy.
fn apply_remote(roster: &mut Roster, item: RosterItem, removed: bool, version: u64) {
    roster.items.retain(|i| i.jid != item.jid);
    if !removed {
        roster.items.push(item);
    }
    roster.version = roster.version.max(version);
}

/// Contacts subscribed to `user`'s presence (RFC 6121 section 4.2.2), from the cache;
/// none if mod_roster is off or the account is not loaded.
pub(crate) fn presence_subscribers(ctx: &Ctx, user: &str) -> Vec<String> {
    let Some(account) = account::cached(ctx, user) else { return Vec::new() };
    let account = account.borrow();
    account.roster.presence_subscribers().map(str::to_owned).collect()
}

/// Contacts whose presence `user` receives (probed at initial presence).
pub(crate) fn presence_sources(ctx: &Ctx, user: &str) -> Vec<String> {
    let Some(account) = account::cached(ctx, user) else { return Vec::new() };
    let account = account.borrow();
    account.roster.presence_sources().map(str::to_owned).collect()
}

/// The subscription `user` has with `contact` (bare), if `contact` is in the roster.
pub(crate) fn subscription(ctx: &Ctx, user: &str, contact: &str) -> Option<Subscription> {
    let account = account::cached(ctx, user)?;
    let account = account.borrow();
    account.roster.item(contact).map(|i| i.subscription)
}

/// Whether `contact` (bare) is a visible roster item of `user`.
pub(crate) fn in_roster(ctx: &Ctx, user: &str, contact: &str) -> bool {
    account::cached(ctx, user).is_some_and(|a| a.borrow().roster.item(contact).is_some_and(|i| i.visible))
}
