//! Personal eventing (XEP-0163, on the XEP-0060 subset it needs) with entity
//! capabilities (XEP-0115) for `+notify` filtering.
//!
//! ```text
//!   presence with <c ver/> --cache hit--> session.notify = nodes the client wants
//!                          \--miss--> disco#info to the client --result (hash checked)--> cache
//!   publish --store--> event to the owner's resources and to contacts allowed by the
//!                      node's access model; each contact's home core keeps only the
//!                      resources whose notify list has the node
//!   notify list learnt --> last item of each wanted node of each contact it follows
//! ```
//! Access models: `presence` (the default: contacts subscribed to the owner's
//! presence), `open` (anyone), `whitelist` (the owner only; no way to add others yet).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use starling_shard::db::StoreError;
use starling_shard::module::{Flow, Iq, IqRoute, IqScope, Module, Push, Reply, Request, Sender};
use starling_shard::{Core, SessionId};
use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::{BareJid, FullJid, JidRef};
use starling_wire::stanza::{write_attribute, IqType, MessageType, PresenceType, Stanza, StanzaKind};

use crate::store::PepItem;
use crate::Ctx;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CAPS_QUERY_PREFIX: &str = "caps-";

/// Bytes of one PEP item's payload; larger ones get `not-acceptable`.
pub const PEP_ITEM_BYTES_MAX: usize = 32 * 1024;

/// Items one PEP node keeps at most (`pubsub#max_items`, `max` means this).
pub const PEP_ITEMS_PER_NODE_MAX: usize = 1000;

/// Items one request by another user returns at most (its answer is bounded: 20 items
/// of at most `PEP_ITEM_BYTES_MAX`).
pub const PEP_ITEMS_FOR_CONTACTS_MAX: usize = 20;

/// Entity-capability queries a core has in flight (XEP-0115); past it new `ver`s wait
/// for the client's next presence. Cost: one id and `ver` each.
pub const CAPS_QUERIES_MAX: usize = 4096;

/// Verified capability hashes a core remembers; cleared when full. Cost: one `ver` and
/// its `+notify` node names each.
pub const CAPS_CACHE_MAX: usize = 4096;

/// Nodes a client wants notifications for (`<feature var='node+notify'/>`).
pub(crate) type Notify = Rc<[Box<str>]>;

const ACCOUNT_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-whitelist",
];

const IQS: &[IqRoute] = &[
    IqRoute { namespace: NS_PUBSUB, element: "pubsub", scopes: &[IqScope::OwnAccount, IqScope::OtherAccount] },
    IqRoute { namespace: NS_PUBSUB_OWNER, element: "pubsub", scopes: &[IqScope::OwnAccount] },
];

/// `mod_pep` with entity capabilities, on one core. Per session it keeps the notify
/// list of a client whose capabilities are known (shared between sessions with the
/// same capabilities).
pub struct Pep {
    ctx: Rc<Ctx>,
    /// The notify list of each session whose capabilities are known.
    notify: RefCell<HashMap<SessionId, Notify>>,
    /// Verified XEP-0115 `ver` -> the `+notify` nodes it stands for.
    caps: RefCell<HashMap<Box<str>, Notify>>,
    /// Capability queries sent to clients: IQ id -> `ver`.
    queries: RefCell<HashMap<String, Box<str>>>,
}

impl Pep {
    pub fn new(ctx: Rc<Ctx>) -> Pep {
        Pep {
            ctx,
            notify: RefCell::new(HashMap::new()),
            caps: RefCell::new(HashMap::new()),
            queries: RefCell::new(HashMap::new()),
        }
    }
}

impl Module for Pep {
    fn name(&self) -> &'static str {
        "mod_pep"
    }

    fn account_features(&self) -> &[&'static str] {
        ACCOUNT_FEATURES
    }

    fn account_identities(&self) -> &[(&'static str, &'static str)] {
        &[("pubsub", "pep")]
    }

    fn iqs(&self) -> &[IqRoute] {
        IQS
    }

    fn handle_iq(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        match iq.scope {
            IqScope::OtherAccount => self.items_for_contact(iq),
            _ => self.owner_request(core, iq),
        }
    }

    /// Reads capabilities from initial presence, and the client's answers to our
    /// capability queries.
    fn on_send(&self, core: &Core, sender: &mut Sender<'_>, stanza: &Stanza<'_>, to: Option<&JidRef<'_>>) -> Flow {
        match stanza.kind {
            StanzaKind::Presence if to.is_none() && stanza.presence_type() == Some(PresenceType::Available) => {
                if self.presence_caps(sender, stanza) {
                    self.send_last_items(core, sender.jid, sender.session);
                }
                Flow::Continue
            }
            StanzaKind::Iq if matches!(stanza.iq_type(), Some(IqType::Result | IqType::Error)) => {
                if self.caps_result(sender, stanza) {
                    self.send_last_items(core, sender.jid, sender.session);
                    return Flow::Stop;
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn wants_push(&self) -> bool {
        true
    }

    /// XEP-0163 section 4.3: events go to every available resource of a contact;
    /// each resource's own core keeps only those its client wants.
    fn on_push(&self, _core: &Core, session: SessionId, _full: &str, stanza: &Stanza<'_>) -> Push {
        if stanza.kind != StanzaKind::Message || stanza.message_type() != MessageType::Headline {
            return Push::Send;
        }
        let Some(node) = event_node(stanza) else { return Push::Send };
        let notify = self.notify.borrow();
        if wants(notify.get(&session), &node) {
            Push::Send
        } else {
            Push::Drop
        }
    }

    fn on_session_close(&self, _core: &Core, _jid: &FullJid, session: SessionId, _was_available: bool) {
        self.notify.borrow_mut().remove(&session);
    }
}

impl Pep {
    /// Reads the XEP-0115 `<c/>` of an available presence and sets the session's
    /// notify list from the cache, or asks the client. Returns true when the list
    /// became known now (the caller then sends the last items).
    fn presence_caps(&self, sender: &mut Sender<'_>, presence: &Stanza<'_>) -> bool {
        let payload = presence.payload();
        let Some(at) = crate::find(payload, b"<c ") else { return false };
        let element = &payload[at..];
        let attribute = |name: &[u8]| starling_wire::xml::attribute(element, name).and_then(|a| a.value());
        let (Some(namespace), Some(node), Some(ver)) = (attribute(b"xmlns"), attribute(b"node"), attribute(b"ver"))
        else {
            return false;
        };
        if namespace != NS_CAPS {
            return false;
        }
        let cached = self.caps.borrow().get(&*ver).cloned();
        if let Some(notify) = cached {
            return self.set_notify(sender.session, notify);
        }
        let id = format!("{CAPS_QUERY_PREFIX}{}", crate::delay::now_us());
        let domain = sender.jid.domain().to_owned();
        sender.out.extend_from_slice(b"<iq type='get'");
        write_attribute(sender.out, "from", &domain);
        write_attribute(sender.out, "to", sender.jid.as_str());
        write_attribute(sender.out, "id", &id);
        sender.out.extend_from_slice(b"><query xmlns='http://jabber.org/protocol/disco#info'");
        write_attribute(sender.out, "node", &format!("{node}#{ver}"));
        sender.out.extend_from_slice(b"/></iq>");
        let mut queries = self.queries.borrow_mut();
        if queries.len() < CAPS_QUERIES_MAX {
            queries.insert(id, ver.into());
        }
        false
    }

    /// An IQ result or error the client sent; true if it answered one of our
    /// capability queries and the notify list is now known.
    fn caps_result(&self, sender: &mut Sender<'_>, stanza: &Stanza<'_>) -> bool {
        let Some(id) = stanza.id.and_then(|id| id.value()) else { return false };
        if !id.starts_with(CAPS_QUERY_PREFIX) {
            return false;
        }
        let Some(ver) = self.queries.borrow_mut().remove(&*id) else { return false };
        if stanza.iq_type() != Some(IqType::Result) {
            return false;
        }
        let Some((notify, verified)) = parse_features(stanza.bytes, &ver) else { return false };
        let notify: Notify = notify.into();
        if verified {
            let mut caps = self.caps.borrow_mut();
            if caps.len() >= CAPS_CACHE_MAX {
                caps.clear();
            }
            caps.insert(ver, notify.clone());
        }
        self.set_notify(sender.session, notify)
    }

    fn set_notify(&self, session: SessionId, notify: Notify) -> bool {
        let mut sessions = self.notify.borrow_mut();
        let new = sessions.get(&session).is_none_or(|old| **old != *notify);
        sessions.insert(session, notify);
        new
    }
}

/// The `+notify` nodes of a disco#info result, and whether the result hashes to
/// `ver` (XEP-0115 section 5.1; results with extended forms are not checked and so
/// not shared between sessions).
fn parse_features(bytes: &[u8], ver: &str) -> Option<(Vec<Box<str>>, bool)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let document = roxmltree::Document::parse(text).ok()?;
    let query = document.root_element().children().find(|c| c.tag_name().namespace() == Some(NS_DISCO_INFO))?;
    let mut identities = Vec::new();
    let mut features = Vec::new();
    let mut forms = false;
    for child in query.children().filter(|c| c.is_element()) {
        match child.tag_name().name() {
            "identity" => identities.push(format!(
                "{}/{}/{}/{}",
                child.attribute("category").unwrap_or(""),
                child.attribute("type").unwrap_or(""),
                child.attribute(("http://www.w3.org/XML/1998/namespace", "lang")).unwrap_or(""),
                child.attribute("name").unwrap_or("")
            )),
            "feature" => features.push(child.attribute("var").unwrap_or("").to_owned()),
            "x" => forms = true,
            _ => {}
        }
    }
    let notify = features.iter().filter_map(|f| f.strip_suffix("+notify")).map(Into::into).collect();
    if forms {
        return Some((notify, false));
    }
    Some((notify, crate::disco::caps_hash(identities, features) == ver))
}

impl Pep {
    /// A pubsub IQ from the client about its own nodes (publish, retract, items, delete).
    fn owner_request(&self, core: &Core, iq: &Iq<'_>) -> Reply {
        let request = iq.request();
        let pubsub = iq.child;
        let Some(action) = pubsub.children().find(|c| c.is_element()) else {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        };
        let node = action.attribute("node").unwrap_or("").to_owned();
        if node.is_empty() {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        }
        let Ok(owner) = iq.account.parse::<BareJid>() else {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        };
        let db = &self.ctx.db;
        match (iq.kind, pubsub.tag_name().namespace(), action.tag_name().name()) {
            (IqType::Set, Some(NS_PUBSUB), "publish") => match parse_publish(pubsub, action, iq.text) {
                Ok((item, access, max_items)) => self.publish(core, owner, request, item, access, max_items),
                Err(error) => Reply::Now(request.error_with(error)),
            },
            (IqType::Set, Some(NS_PUBSUB), "retract") => {
                let Some(id) = action.children().find(|c| c.has_tag_name("item")).and_then(|i| i.attribute("id"))
                else {
                    return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
                };
                let (id, user) = (id.to_owned(), owner.clone());
                let write = db.run_for(owner.as_str(), move |store| store.pep_retract(&user, &node, &id));
                Reply::Later(Box::pin(async move { found_or_not(&request, write.await) }))
            }
            (IqType::Set, Some(NS_PUBSUB_OWNER), "delete") => {
                let user = owner.clone();
                let write = db.run_for(owner.as_str(), move |store| store.pep_delete(&user, &node));
                Reply::Later(Box::pin(async move { found_or_not(&request, write.await) }))
            }
            (IqType::Get, Some(NS_PUBSUB), "items") => {
                let max = action.attribute("max_items").and_then(|m| m.parse().ok()).unwrap_or(PEP_ITEMS_PER_NODE_MAX);
                Reply::Later(Box::pin(items(self.ctx.clone(), owner, node, max, request, true)))
            }
            _ => Reply::Now(request.error(StanzaErrorCondition::FeatureNotImplemented)),
        }
    }

    /// XEP-0163: a contact reads items of one of the account's nodes.
    fn items_for_contact(&self, iq: &Iq<'_>) -> Reply {
        let request = iq.request();
        if iq.kind != IqType::Get {
            return Reply::Now(request.error(StanzaErrorCondition::Forbidden));
        }
        let wanted = iq.child.descendants().find(|n| n.has_tag_name((NS_PUBSUB, "items")));
        let Some((node, max)) = wanted.and_then(|items| {
            let max = items.attribute("max_items").and_then(|m| m.parse().ok()).unwrap_or(PEP_ITEMS_PER_NODE_MAX);
            Some((items.attribute("node")?.to_owned(), max))
        }) else {
            return Reply::Now(request.error(StanzaErrorCondition::FeatureNotImplemented));
        };
        let Ok(owner) = iq.account.parse::<BareJid>() else {
            return Reply::Now(request.error(StanzaErrorCondition::BadRequest));
        };
        let is_owner = iq.requester_bare() == owner.as_str();
        // Another user reads a bounded page (the owner reads everything).
        let max = if is_owner { max } else { max.min(PEP_ITEMS_FOR_CONTACTS_MAX) };
        Reply::Later(Box::pin(items(self.ctx.clone(), owner, node, max, request, is_owner)))
    }
}

fn found_or_not(request: &Request, result: Result<bool, StoreError>) -> Vec<u8> {
    match result {
        Ok(true) => request.result(b""),
        Ok(false) => request.error(StanzaErrorCondition::ItemNotFound),
        Err(_) => request.error(StanzaErrorCondition::InternalServerError),
    }
}

/// The item to publish, the node's access model, and how many items it keeps
/// (XEP-0060 section 7.1, publish-options of section 7.1.5).
fn parse_publish(
    pubsub: roxmltree::Node<'_, '_>,
    publish: roxmltree::Node<'_, '_>,
    text: &str,
) -> Result<(PepItem, String, usize), StanzaError> {
    let node = publish.attribute("node").unwrap_or("").to_owned();
    let mut items = publish.children().filter(|c| c.has_tag_name("item"));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(StanzaError::new(StanzaErrorCondition::BadRequest));
    };
    let mut payloads = item.children().filter(|c| c.is_element());
    let (Some(payload), None) = (payloads.next(), payloads.next()) else {
        return Err(StanzaError::new(StanzaErrorCondition::BadRequest));
    };
    let payload = &text[payload.range()];
    if payload.len() > PEP_ITEM_BYTES_MAX {
        return Err(StanzaError::with_text(StanzaErrorCondition::NotAcceptable, "payload too big"));
    }
    let id = item.attribute("id").map(str::to_owned).unwrap_or_else(|| format!("{:x}", crate::delay::now_us()));
    let (mut access, mut max_items) = ("presence".to_owned(), 1);
    let options = pubsub.children().find(|c| c.has_tag_name("publish-options"));
    for field in options.iter().flat_map(|o| o.descendants()).filter(|c| c.has_tag_name("field")) {
        let value = field.children().find(|c| c.has_tag_name("value")).and_then(|v| v.text()).unwrap_or("");
        match field.attribute("var") {
            Some("pubsub#access_model") if matches!(value, "presence" | "open" | "whitelist") => access = value.into(),
            Some("pubsub#access_model") => {
                return Err(StanzaError::with_text(StanzaErrorCondition::Conflict, "unsupported access model"))
            }
            Some("pubsub#max_items") if value == "max" => max_items = PEP_ITEMS_PER_NODE_MAX,
            Some("pubsub#max_items") => {
                max_items = value.parse::<usize>().map_err(|_| StanzaError::new(StanzaErrorCondition::BadRequest))?;
                max_items = max_items.clamp(1, PEP_ITEMS_PER_NODE_MAX);
            }
            _ => {}
        }
    }
    Ok((PepItem { node, id, payload: payload.as_bytes().to_vec() }, access, max_items))
}

impl Pep {
    fn publish(
        &self,
        core: &Core,
        owner: BareJid,
        request: Request,
        item: PepItem,
        access: String,
        max_items: usize,
    ) -> Reply {
        let core = core.handle();
        let ctx = self.ctx.clone();
        let (user, stored, model) = (owner.clone(), item.clone(), access.clone());
        let write = ctx.db.run_for(owner.as_str(), move |store| store.pep_publish(&user, &stored, &model, max_items));
        Reply::Later(Box::pin(async move {
            match write.await {
                Ok(true) => {}
                // XEP-0060 section 7.1.5: publish-options that do not match the node.
                Ok(false) => {
                    return request
                        .error_with(StanzaError::with_text(StanzaErrorCondition::Conflict, "precondition-not-met"))
                }
                Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
            }
            notify(&core, &ctx, &owner, &item, &access);
            let mut reply = b"<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish".to_vec();
            write_attribute(&mut reply, "node", &item.node);
            reply.extend_from_slice(b"><item");
            write_attribute(&mut reply, "id", &item.id);
            reply.extend_from_slice(b"/></publish></pubsub>");
            request.result(&reply)
        }))
    }
}

/// Sends the event for `item` to the owner's resources and to every contact the
/// access model allows (each resource's core filters by notify lists).
fn notify(core: &Core, ctx: &Ctx, owner: &BareJid, item: &PepItem, access: &str) {
    let mut recipients = vec![owner.as_str().to_owned()];
    if access != "whitelist" {
        recipients.extend(crate::roster::presence_subscribers(ctx, owner.as_str()));
    }
    for recipient in recipients {
        let mut event = Vec::with_capacity(item.payload.len() + 256);
        write_event(owner.as_str(), &recipient, item, &mut event);
        core.route(&event);
    }
}

fn write_event(from: &str, to: &str, item: &PepItem, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<message type='headline'");
    write_attribute(out, "from", from);
    write_attribute(out, "to", to);
    out.extend_from_slice(b"><event xmlns='http://jabber.org/protocol/pubsub#event'><items");
    write_attribute(out, "node", &item.node);
    out.extend_from_slice(b"><item");
    write_attribute(out, "id", &item.id);
    out.push(b'>');
    out.extend_from_slice(&item.payload);
    out.extend_from_slice(b"</item></items></event></message>");
}

/// The node an event message is about, if `stanza` is a PEP event.
pub(crate) fn event_node(stanza: &Stanza<'_>) -> Option<String> {
    let payload = stanza.payload();
    crate::find(payload, NS_PUBSUB_EVENT.as_bytes())?;
    let at = crate::find(payload, b"<items ")?;
    starling_wire::xml::attribute(&payload[at..], b"node").and_then(|a| a.value()).map(|v| v.into_owned())
}

/// Whether a session with `notify` wants events of `node`.
pub(crate) fn wants(notify: Option<&Notify>, node: &str) -> bool {
    notify.is_some_and(|nodes| nodes.iter().any(|n| &**n == node))
}

/// Answers an items request for `owner`'s node from `request`'s requester: allowed
/// for the owner, for anyone on `open` nodes, and for presence subscribers on
/// `presence` nodes.
pub(crate) async fn items(
    ctx: Rc<Ctx>,
    owner: BareJid,
    node: String,
    max: usize,
    request: Request,
    is_owner: bool,
) -> Vec<u8> {
    let user = owner.clone();
    let read_node = node.clone();
    let max = max.clamp(1, PEP_ITEMS_PER_NODE_MAX);
    let read = ctx.db.run_for(owner.as_str(), move |store| store.pep_items(&user, &read_node, max)).await;
    let found = match read {
        Ok(Some(found)) => found,
        Ok(None) => return request.error(StanzaErrorCondition::ItemNotFound),
        Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
    };
    // The owner's account is loaded here: a session, or the delivery's `prepare`.
    let subscribed =
        || crate::roster::subscription(&ctx, owner.as_str(), request.requester_bare()).is_some_and(|s| s.from());
    let allowed = is_owner || found.access == "open" || (found.access == "presence" && subscribed());
    if !allowed {
        return request.error(StanzaErrorCondition::NotAuthorized);
    }
    let mut reply = b"<pubsub xmlns='http://jabber.org/protocol/pubsub'><items".to_vec();
    write_attribute(&mut reply, "node", &node);
    reply.push(b'>');
    for item in found.items.iter().rev() {
        reply.extend_from_slice(b"<item");
        write_attribute(&mut reply, "id", &item.id);
        reply.push(b'>');
        reply.extend_from_slice(&item.payload);
        reply.extend_from_slice(b"</item>");
    }
    reply.extend_from_slice(b"</items></pubsub>");
    request.result(&reply)
}

impl Pep {
    /// XEP-0163 section 6.2: a session whose notify list just became known gets the
    /// last item of each node it wants, from its own account and each contact it
    /// follows.
    fn send_last_items(&self, core: &Core, jid: &FullJid, session: SessionId) {
        let Some(notify) = self.notify.borrow().get(&session).cloned().filter(|n| !n.is_empty()) else { return };
        let sources = crate::roster::presence_sources(&self.ctx, jid.bare_str());
        let full: Box<str> = jid.as_str().into();
        let user = jid.to_bare();
        let (ctx, task_core) = (self.ctx.clone(), core.handle());
        core.spawn("sending the last PEP items", async move {
            for contact in std::iter::once(user.as_str().to_owned()).chain(sources) {
                let Ok(owner) = contact.parse::<BareJid>() else { continue };
                let own = owner == user;
                let nodes: Vec<String> = notify.iter().map(|n| n.to_string()).collect();
                let reader = owner.clone();
                let read = ctx.db.run_for(owner.as_str(), move |store| {
                    let mut last = Vec::new();
                    for node in nodes.iter() {
                        if let Some(found) = store.pep_items(&reader, node, 1)? {
                            if own || found.access != "whitelist" {
                                last.extend(found.items);
                            }
                        }
                    }
                    Ok(last)
                });
                let Ok(items) = read.await else { continue };
                for item in &items {
                    let mut event = Vec::new();
                    write_event(owner.as_str(), &full, item, &mut event);
                    if !task_core.push_raw(session, &full, &event) {
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The XEP-0115 section 5.2 example hashes to its published `ver`, and its
    /// `+notify` features are read.
    #[test]
    fn verifies_the_xep_0115_example() {
        let result = "<iq type='result' id='caps-1'><query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
            <identity category='client' name='Exodus 0.9.1' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/></query></iq>";
        let (notify, verified) = parse_features(result.as_bytes(), "QgayPKawpkPSDYmwT/WM94uAlu0=").unwrap();
        assert!(verified);
        assert!(notify.is_empty());
        let with_notify = result.replace("muc'/>", "muc'/><feature var='urn:xmpp:mood+notify'/>");
        let (notify, verified) = parse_features(with_notify.as_bytes(), "QgayPKawpkPSDYmwT/WM94uAlu0=").unwrap();
        assert!(!verified, "a changed feature list does not match the announced hash");
        assert_eq!(&*notify, [Box::<str>::from("urn:xmpp:mood")]);
    }

    /// Publish requests: one item with one payload; options set the access model and
    /// the number of items kept; unsupported models are refused.
    #[test]
    fn parses_publish_requests() {
        let parse = |xml: &str| {
            let document = roxmltree::Document::parse(xml).unwrap();
            let pubsub = document.root_element();
            let publish = pubsub.children().find(|c| c.has_tag_name("publish")).unwrap();
            parse_publish(pubsub, publish, xml).map_err(|e| e.condition)
        };
        let (item, access, max) = parse(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:bookmarks:1'><item id='r@x'><conference xmlns='urn:xmpp:bookmarks:1'/></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>whitelist</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x></publish-options></pubsub>",
        )
        .unwrap();
        assert_eq!((item.id.as_str(), access.as_str(), max), ("r@x", "whitelist", PEP_ITEMS_PER_NODE_MAX));
        assert_eq!(item.payload, b"<conference xmlns='urn:xmpp:bookmarks:1'/>");
        let plain = parse("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><mood xmlns='urn:xmpp:mood'/></item></publish></pubsub>").unwrap();
        assert_eq!((plain.1.as_str(), plain.2), ("presence", 1));
        assert_eq!(
            parse("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item/></publish></pubsub>")
                .unwrap_err(),
            StanzaErrorCondition::BadRequest
        );
        let authorize = "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><m xmlns='x'/></item></publish><publish-options><x xmlns='jabber:x:data'><field var='pubsub#access_model'><value>authorize</value></field></x></publish-options></pubsub>";
        assert_eq!(parse(authorize).unwrap_err(), StanzaErrorCondition::Conflict);
    }
}
