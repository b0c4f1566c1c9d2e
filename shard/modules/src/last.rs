//! `mod_last`: last activity (XEP-0012). The server answers its uptime; for an
//! account, how long ago its last resource went away (0 while one is online), to a
//! requester the account shares presence with (`forbidden` otherwise). Recorded when
//! an account's last session on this node ends.

use std::rc::Rc;

use starling_shard::module::{Iq, IqRoute, IqScope, Module, Reply};
use starling_shard::{Core, SessionId};
use starling_wire::error::StanzaErrorCondition;
use starling_wire::jid::{BareJid, FullJid};
use starling_wire::stanza::IqType;

use crate::delay::now_us;
use crate::store::DataKind;
use crate::Ctx;

pub const NS_LAST: &str = "jabber:iq:last";

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_LAST];

const IQS: &[IqRoute] = &[IqRoute {
    namespace: NS_LAST,
    element: "query",
    scopes: &[IqScope::Server, IqScope::OwnAccount, IqScope::OtherAccount],
}];

/// The last activity module of one core.
pub struct Last {
    ctx: Rc<Ctx>,
}

impl Last {
    pub fn new(ctx: Rc<Ctx>) -> Last {
        Last { ctx }
    }
}

impl Module for Last {
    fn name(&self) -> &'static str {
        "mod_last"
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        if iq.kind != IqType::Get {
            return iq.error(StanzaErrorCondition::BadRequest);
        }
        if iq.scope == IqScope::Server {
            // XEP-0012 section 5: a server's last activity is its uptime.
            let uptime = format!("<query xmlns='jabber:iq:last' seconds='{}'/>", core.uptime().as_secs());
            return iq.result(uptime.as_bytes());
        }
        let Ok(user) = iq.account.parse::<BareJid>() else { return iq.error(StanzaErrorCondition::BadRequest) };
        let requester = iq.requester_bare();
        // The account is loaded on the core that delivers to it (a session, or the
        // delivery's `prepare`).
        let allowed = requester == user.as_str()
            || crate::roster::subscription(&self.ctx, user.as_str(), requester).is_some_and(|s| s.from());
        if !allowed {
            return iq.error(StanzaErrorCondition::Forbidden);
        }
        if core.resources(user.as_str()).iter().any(|r| r.available) {
            return iq.result(b"<query xmlns='jabber:iq:last' seconds='0'/>");
        }
        let request = iq.request();
        let owner = user.clone();
        let stored = self.ctx.db.run_for(user.as_str(), move |store| store.data(&owner, DataKind::LastActivity, ""));
        Reply::Later(Box::pin(async move {
            match stored.await {
                Ok(Some(value)) => {
                    let then: u64 = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                    let seconds = (now_us() / 1_000_000).saturating_sub(then);
                    request.result(format!("<query xmlns='jabber:iq:last' seconds='{seconds}'/>").as_bytes())
                }
                Ok(None) => request.error(StanzaErrorCondition::ItemNotFound),
                Err(_) => request.error(StanzaErrorCondition::InternalServerError),
            }
        }))
    }

    /// XEP-0012 section 4: remembers when the account's last resource went away.
    fn on_session_close(&self, core: &Core, jid: &FullJid, _session: SessionId, _was_available: bool) {
        if !core.sessions_of(jid.bare_str()).is_empty() {
            return;
        }
        let owner = jid.to_bare();
        let seconds = (now_us() / 1_000_000).to_string();
        let write = self.ctx.db.run_for(owner.as_str(), {
            let owner = owner.clone();
            move |store| store.set_data(&owner, DataKind::LastActivity, "", Some(seconds.as_bytes()))
        });
        core.spawn("recording last activity", async move {
            if let Err(error) = write.await {
                log::warn!("last: recording the last activity of {owner} failed: {error}");
            }
        });
    }
}
