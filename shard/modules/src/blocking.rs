//! `mod_blocking`: the blocking command (XEP-0191). A user's block list lives in the
//! account cache, loaded at login and, for an account with no session, before a
//! stanza is delivered to it (`prepare`): blocking never depends on the user being
//! online, and it applies on every node (`on_deliver` runs where the account is
//! delivered, and changes reach the other nodes' caches as events).
//!
//! ```text
//!  user --> blocked JID: stanza refused (not-acceptable + <blocked/>), section 3.3
//!  blocked JID --> user: message / IQ request bounced (service-unavailable), presence
//!                        and IQ answers dropped, section 3.3
//!  block: unavailable presence to the blocked, pushes to every resource, section 3.3
//!  unblock: the user's current presence to the unblocked contact, section 3.4
//! ```

use std::rc::Rc;

use starling_shard::delivery::Decision;
use starling_shard::module::{Background, Delivery, Flow, Iq, IqRoute, IqScope, Module, Reply, Sender};
use starling_shard::Core;
use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::{BareJid, Jid, JidRef};
use starling_wire::stanza::{write_attribute, IqType, Stanza, StanzaKind};

use crate::account;
use crate::Ctx;

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";

/// JIDs one block list holds; beyond it `resource-constraint`.
pub const BLOCKED_JIDS_MAX: usize = 1000;

pub(crate) const SERVER_FEATURES: &[&str] = &[NS_BLOCKING];

const NAME: &str = "mod_blocking";

const IQS: &[IqRoute] = &[
    IqRoute { namespace: NS_BLOCKING, element: "blocklist", scopes: &[IqScope::OwnAccount] },
    IqRoute { namespace: NS_BLOCKING, element: "block", scopes: &[IqScope::OwnAccount] },
    IqRoute { namespace: NS_BLOCKING, element: "unblock", scopes: &[IqScope::OwnAccount] },
];

/// The blocking module of one core.
pub struct Blocking {
    ctx: Rc<Ctx>,
}

impl Blocking {
    pub fn new(ctx: Rc<Ctx>) -> Blocking {
        Blocking { ctx }
    }
}

/// Is `sender` (a full or bare JID, or a domain) blocked by `user` (XEP-0191 section
/// 3.4 matching: full JID, bare JID, domain)? False when mod_blocking is off or the
/// account is not loaded here (it is, wherever `on_deliver` runs).
pub(crate) fn blocks(ctx: &Ctx, user: &str, sender: &str) -> bool {
    if !ctx.config().blocking {
        return false;
    }
    let Some(account) = account::cached(ctx, user) else { return false };
    let Ok(account) = account.try_borrow() else { return false };
    matches(&account.blocked, sender)
}

fn matches(blocked: &[String], sender: &str) -> bool {
    if blocked.is_empty() {
        return false;
    }
    let bare = sender.split('/').next().unwrap_or(sender);
    let domain = bare.rsplit('@').next().unwrap_or(bare);
    blocked.iter().any(|b| b == sender || b == bare || b == domain)
}

impl Module for Blocking {
    fn name(&self) -> &'static str {
        NAME
    }

    fn server_features(&self) -> &[&'static str] {
        SERVER_FEATURES
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        let Ok(user) = iq.account.parse::<BareJid>() else { return iq.error(StanzaErrorCondition::BadRequest) };
        match (iq.kind, iq.child.tag_name().name()) {
            (IqType::Get, "blocklist") => {
                let ctx = self.ctx.clone();
                let request = iq.request();
                Reply::Later(Box::pin(async move {
                    let Ok(account) = account::load(&ctx, &user).await else {
                        return request.error(StanzaErrorCondition::InternalServerError);
                    };
                    let mut list = b"<blocklist xmlns='urn:xmpp:blocking'>".to_vec();
                    write_items(&account.borrow().blocked, &mut list);
                    list.extend_from_slice(b"</blocklist>");
                    request.result(&list)
                }))
            }
            (IqType::Set, name @ ("block" | "unblock")) => match items(iq.child) {
                Ok(jids) if name == "block" && jids.is_empty() => iq.error(StanzaErrorCondition::BadRequest),
                Ok(jids) => self.change(core, user, iq, name == "block", jids),
                Err(condition) => iq.error(condition),
            },
            _ => iq.error(StanzaErrorCondition::BadRequest),
        }
    }

    /// XEP-0191 section 3.3: the user's own stanzas to a blocked JID are refused.
    fn on_send(&self, _core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        let Some(to) = to else { return Flow::Continue };
        if !blocks(&self.ctx, sender.jid.bare_str(), to.as_str()) {
            return Flow::Continue;
        }
        let request = matches!(stanza.iq_type(), Some(IqType::Get | IqType::Set));
        if stanza.kind == StanzaKind::Message || request {
            let mut error =
                StanzaError::with_text(StanzaErrorCondition::NotAcceptable, "you have blocked this contact");
            error.extra = Some("<blocked xmlns='urn:xmpp:blocking:errors'/>".into());
            stanza.write_error_reply(to.as_str(), sender.jid.as_str(), &error, sender.out);
        }
        Flow::Stop
    }

    /// XEP-0191 section 3.3: what a blocked JID sends the user is not delivered.
    fn on_deliver(&self, _core: &Core, delivery: &mut Delivery<'_>) -> Flow {
        if !blocks(&self.ctx, delivery.to.bare_str(), delivery.from) {
            return Flow::Continue;
        }
        let stanza = delivery.stanza;
        let bounce = stanza.kind == StanzaKind::Message || matches!(stanza.iq_type(), Some(IqType::Get | IqType::Set));
        delivery.targets.clear();
        delivery.decision = Decision::Ignore;
        if bounce {
            delivery.error = Some(StanzaErrorCondition::ServiceUnavailable);
        }
        Flow::Continue
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
        let Some((blocking, jids)) = decode_change(payload) else { return };
        apply(&mut cached.borrow_mut().blocked, blocking, &jids);
    }
}

impl Blocking {
    /// XEP-0191 sections 3.3 and 3.4: changes the block list, pushes the change to
    /// the account's resources and the other nodes, tells newly blocked contacts the
    /// user went away and unblocked ones its current presence.
    fn change(&self, core: &Core, user: BareJid, iq: &Iq<'_>, blocking: bool, jids: Vec<String>) -> Reply {
        let ctx = self.ctx.clone();
        let core = core.handle();
        let request = iq.request();
        Reply::Later(Box::pin(async move {
            let Ok(account) = account::load(&ctx, &user).await else {
                return request.error(StanzaErrorCondition::InternalServerError);
            };
            let changed: Vec<String> = {
                let mut cached = account.borrow_mut();
                if blocking {
                    let added: Vec<String> = jids.iter().filter(|j| !cached.blocked.contains(j)).cloned().collect();
                    if cached.blocked.len() + added.len() > BLOCKED_JIDS_MAX {
                        return request.error(StanzaErrorCondition::ResourceConstraint);
                    }
                    cached.blocked.extend(added.iter().cloned());
                    added
                } else if jids.is_empty() {
                    std::mem::take(&mut cached.blocked)
                } else {
                    cached.blocked.retain(|j| !jids.contains(j));
                    jids.clone()
                }
            };
            for jid in &changed {
                if blocking {
                    crate::presence::send_unavailable_if_allowed(&core, &ctx, user.as_str(), jid);
                } else if crate::roster::subscription(&ctx, user.as_str(), jid).is_some_and(|s| s.from()) {
                    // XEP-0191 section 3.4: the unblocked contact learns the current presence.
                    crate::presence::send_current_to(&core, &ctx, user.as_str(), jid);
                }
            }
            let pushed = if blocking || !jids.is_empty() { &changed[..] } else { &[] };
            push(&core, &user, if blocking { "block" } else { "unblock" }, pushed);
            core.send_event(NAME, user.as_str(), encode_change(blocking, &jids));
            let owner = user.clone();
            let write = ctx.db.run_for(user.as_str(), move |store| {
                if blocking {
                    store.block(&owner, &changed)
                } else {
                    store.unblock(&owner, &jids)
                }
            });
            match write.await {
                Ok(()) => request.result(b""),
                Err(error) => {
                    log::warn!("blocking: storing a change of {user} failed: {error}");
                    request.error(StanzaErrorCondition::InternalServerError)
                }
            }
        }))
    }
}

/// The normalised JIDs of a block/unblock request's `<item/>`s.
fn items(command: roxmltree::Node<'_, '_>) -> Result<Vec<String>, StanzaErrorCondition> {
    let mut jids: Vec<String> = Vec::new();
    for item in command.children().filter(|c| c.is_element() && c.tag_name().name() == "item") {
        let jid = item.attribute("jid").ok_or(StanzaErrorCondition::BadRequest)?;
        let jid = Jid::parse(jid).map_err(|_| StanzaErrorCondition::JidMalformed)?;
        if !jids.iter().any(|j| j == jid.as_str()) {
            jids.push(jid.as_str().to_owned());
        }
    }
    Ok(jids)
}

fn write_items(jids: &[String], out: &mut Vec<u8>) {
    for jid in jids {
        out.extend_from_slice(b"<item");
        write_attribute(out, "jid", jid);
        out.extend_from_slice(b"/>");
    }
}

/// Pushes a block or unblock to every resource of the account, on every node.
fn push(core: &Core, user: &BareJid, command: &str, jids: &[String]) {
    for resource in core.resources(user.as_str()) {
        let mut push = b"<iq type='set'".to_vec();
        write_attribute(&mut push, "to", &resource.full);
        write_attribute(&mut push, "id", &format!("push{}", core.next_id()));
        push.extend_from_slice(format!("><{command} xmlns='urn:xmpp:blocking'>").as_bytes());
        write_items(jids, &mut push);
        push.extend_from_slice(format!("</{command}></iq>").as_bytes());
        core.push_to(&resource, &push);
    }
}

/// The change for the other nodes: `b` or `u`, then the JIDs, separated by spaces
/// (a normalised JID holds none); an unblock with no JIDs clears the list.
fn encode_change(blocking: bool, jids: &[String]) -> Vec<u8> {
    let mut out = vec![if blocking { b'b' } else { b'u' }];
    for jid in jids {
        out.push(b' ');
        out.extend_from_slice(jid.as_bytes());
    }
    out
}

fn decode_change(bytes: &[u8]) -> Option<(bool, Vec<String>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    let blocking = match parts.next()? {
        "b" => true,
        "u" => false,
        _ => return None,
    };
    Some((blocking, parts.filter(|p| !p.is_empty()).map(str::to_owned).collect()))
}

fn apply(blocked: &mut Vec<String>, blocking: bool, jids: &[String]) {
    if blocking {
        for jid in jids {
            if !blocked.contains(jid) {
                blocked.push(jid.clone());
            }
        }
    } else if jids.is_empty() {
        blocked.clear();
    } else {
        blocked.retain(|j| !jids.contains(j));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocking matches a full JID, its bare JID, or its domain, and nothing else.
    #[test]
    fn block_matching() {
        let blocked = vec!["spam@evil".to_owned(), "bad.example".to_owned()];
        assert!(matches(&blocked, "spam@evil/phone"));
        assert!(matches(&blocked, "spam@evil"));
        assert!(matches(&blocked, "anyone@bad.example/r"));
        assert!(!matches(&blocked, "friend@evil"));
        assert!(!matches(&[], "spam@evil"));
    }

    /// A change survives the trip to another node and applies the same there.
    #[test]
    fn changes_round_trip() {
        let jids = vec!["a@x".to_owned(), "y".to_owned()];
        assert_eq!(decode_change(&encode_change(true, &jids)), Some((true, jids.clone())));
        assert_eq!(decode_change(&encode_change(false, &[])), Some((false, vec![])));
        assert_eq!(decode_change(b"x a@b"), None);
        let mut list = vec!["a@x".to_owned(), "z@x".to_owned()];
        apply(&mut list, false, &["a@x".to_owned()]);
        assert_eq!(list, vec!["z@x".to_owned()]);
        apply(&mut list, false, &[]);
        assert!(list.is_empty());
    }
}
