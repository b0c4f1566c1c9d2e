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

use std::rc::Rc;

use starling_wire::error::{StanzaError, StanzaErrorCondition};
use starling_wire::jid::BareJid;
use starling_wire::stanza::{write_attribute, IqType, Stanza};

use crate::blocking::{PepItem, StoreError};
use crate::core::Core;
use crate::im::{Outcome, Request};
use crate::limits::{DOCUMENT_BYTES_MAX, PEP_ITEMS_PER_NODE_MAX};
use crate::session::State;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CAPS_QUERY_PREFIX: &str = "caps-";

/// Nodes a client wants notifications for (`<feature var='node+notify'/>`).
pub(crate) type Notify = Rc<[Box<str>]>;

/// Reads the XEP-0115 `<c/>` of an available presence from the session `state` and
/// sets its notify list from the core's cache, or asks the client. Returns true when
/// the list became known now (the caller then sends the last items).
pub(crate) fn presence_caps(core: &Core, state: &mut State, presence: &Stanza<'_>) -> bool {
    let payload = presence.payload();
    let Some(at) = find(payload, b"<c ") else { return false };
    let element = &payload[at..];
    let attribute = |name: &[u8]| starling_wire::xml::attribute(element, name).and_then(|a| a.value());
    let (Some(namespace), Some(node), Some(ver)) = (attribute(b"xmlns"), attribute(b"node"), attribute(b"ver")) else {
        return false;
    };
    if namespace != NS_CAPS {
        return false;
    }
    let cached = core.caps.borrow().get(&*ver).cloned();
    if let Some(notify) = cached {
        return set_notify(core, state.jid.as_str(), notify);
    }
    let id = format!("{CAPS_QUERY_PREFIX}{}", core.next_id());
    let domain = state.jid.domain().to_owned();
    state.out.extend_from_slice(b"<iq type='get'");
    write_attribute(&mut state.out, "from", &domain);
    write_attribute(&mut state.out, "to", state.jid.as_str());
    write_attribute(&mut state.out, "id", &id);
    state.out.extend_from_slice(b"><query xmlns='http://jabber.org/protocol/disco#info'");
    write_attribute(&mut state.out, "node", &format!("{node}#{ver}"));
    state.out.extend_from_slice(b"/></iq>");
    let mut queries = core.caps_queries.borrow_mut();
    if queries.len() < crate::limits::CAPS_QUERIES_MAX {
        queries.insert(id, ver.into());
    }
    false
}

/// Handles an IQ result or error the client sent to the server; true if it answered
/// one of our capability queries (and the notify list is now known).
pub(crate) fn caps_result(core: &Core, state: &State, stanza: &Stanza<'_>) -> bool {
    let Some(id) = stanza.id.and_then(|id| id.value()) else { return false };
    if !id.starts_with(CAPS_QUERY_PREFIX) {
        return false;
    }
    let Some(ver) = core.caps_queries.borrow_mut().remove(&*id) else { return false };
    if stanza.iq_type() != Some(IqType::Result) {
        return false;
    }
    let Some((notify, verified)) = parse_features(stanza.bytes, &ver) else { return false };
    let notify: Notify = notify.into();
    if verified {
        let mut caps = core.caps.borrow_mut();
        if caps.len() >= crate::limits::CAPS_CACHE_MAX {
            caps.clear();
        }
        caps.insert(ver, notify.clone());
    }
    set_notify(core, state.jid.as_str(), notify)
}

fn set_notify(core: &Core, full: &str, notify: Notify) -> bool {
    let mut sessions = core.sessions.borrow_mut();
    let Some(session) = sessions.session_mut(full) else { return false };
    let new = session.notify.as_ref().is_none_or(|old| **old != *notify);
    session.notify = Some(notify);
    new
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
    Some((notify, caps_hash(identities, features) == ver))
}

/// The XEP-0115 `ver` (section 5.1, SHA-1, no extended forms) of identities written
/// `category/type/lang/name` and feature names.
pub(crate) fn caps_hash(mut identities: Vec<String>, mut features: Vec<String>) -> String {
    identities.sort();
    features.sort();
    let mut input = String::new();
    for part in identities.iter().chain(features.iter()) {
        input.push_str(part);
        input.push('<');
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, input.as_bytes());
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A pubsub IQ from the client about its own nodes (publish, retract, items, delete).
pub(crate) fn from_client(
    core: &Core,
    state: &mut State,
    request: Request,
    kind: IqType,
    pubsub: roxmltree::Node<'_, '_>,
    text: &str,
) -> Outcome {
    let Some(action) = pubsub.children().find(|c| c.is_element()) else {
        state.out.extend_from_slice(&request.error(StanzaErrorCondition::BadRequest));
        return Outcome::Done;
    };
    let node = action.attribute("node").unwrap_or("").to_owned();
    let fail = |state: &mut State, error: StanzaError| {
        state.out.extend_from_slice(&request.error_with(error));
        Outcome::Done
    };
    if node.is_empty() {
        return fail(state, StanzaError::new(StanzaErrorCondition::BadRequest));
    }
    let owner = state.jid.to_bare();
    match (kind, pubsub.tag_name().namespace(), action.tag_name().name()) {
        (IqType::Set, Some(NS_PUBSUB), "publish") => match parse_publish(pubsub, action, text) {
            Ok((item, access, max_items)) => publish(core, owner, request, item, access, max_items),
            Err(error) => fail(state, error),
        },
        (IqType::Set, Some(NS_PUBSUB), "retract") => {
            let Some(id) = action.children().find(|c| c.has_tag_name("item")).and_then(|i| i.attribute("id")) else {
                return fail(state, StanzaError::new(StanzaErrorCondition::BadRequest));
            };
            let (id, user) = (id.to_owned(), owner.clone());
            let write = core.shared.db.run_for(owner.as_str(), move |store| store.pep_retract(&user, &node, &id));
            Outcome::Wait(Box::pin(async move { found_or_not(&request, write.await) }))
        }
        (IqType::Set, Some(NS_PUBSUB_OWNER), "delete") => {
            let user = owner.clone();
            let write = core.shared.db.run_for(owner.as_str(), move |store| store.pep_delete(&user, &node));
            Outcome::Wait(Box::pin(async move { found_or_not(&request, write.await) }))
        }
        (IqType::Get, Some(NS_PUBSUB), "items") => {
            let max = action.attribute("max_items").and_then(|m| m.parse().ok()).unwrap_or(PEP_ITEMS_PER_NODE_MAX);
            Outcome::Wait(Box::pin(items(core.rc(), owner, node, max, request, true)))
        }
        _ => fail(state, StanzaError::new(StanzaErrorCondition::FeatureNotImplemented)),
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
    if payload.len() > DOCUMENT_BYTES_MAX {
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

fn publish(core: &Core, owner: BareJid, request: Request, item: PepItem, access: String, max_items: usize) -> Outcome {
    let core = core.rc();
    let (user, stored, model) = (owner.clone(), item.clone(), access.clone());
    let write =
        core.shared.db.run_for(owner.as_str(), move |store| store.pep_publish(&user, &stored, &model, max_items));
    Outcome::Wait(Box::pin(async move {
        match write.await {
            Ok(true) => {}
            // XEP-0060 section 7.1.5: publish-options that do not match the node.
            Ok(false) => {
                return request
                    .error_with(StanzaError::with_text(StanzaErrorCondition::Conflict, "precondition-not-met"))
            }
            Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
        }
        notify(&core, &owner, &item, &access).await;
        let mut reply = b"<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish".to_vec();
        write_attribute(&mut reply, "node", &item.node);
        reply.extend_from_slice(b"><item");
        write_attribute(&mut reply, "id", &item.id);
        reply.extend_from_slice(b"/></publish></pubsub>");
        request.result(&reply)
    }))
}

/// Sends the event for `item` to the owner's resources and to every contact the
/// access model allows (their home cores filter by notify lists).
async fn notify(core: &Core, owner: &BareJid, item: &PepItem, access: &str) {
    let mut recipients = vec![owner.as_str().to_owned()];
    if access != "whitelist" {
        if let Ok(account) = crate::account::load(core, owner).await {
            recipients.extend(account.borrow().roster.presence_subscribers().map(str::to_owned));
        }
        crate::account::release(core, owner.as_str());
    }
    for recipient in recipients {
        let mut event = Vec::with_capacity(item.payload.len() + 256);
        write_event(owner.as_str(), &recipient, item, &mut event);
        crate::router::route(core, &recipient, &event);
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
    find(payload, NS_PUBSUB_EVENT.as_bytes())?;
    let at = find(payload, b"<items ")?;
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
    core: Rc<Core>,
    owner: BareJid,
    node: String,
    max: usize,
    request: Request,
    is_owner: bool,
) -> Vec<u8> {
    let user = owner.clone();
    let read_node = node.clone();
    let max = max.clamp(1, PEP_ITEMS_PER_NODE_MAX);
    let read = core.shared.db.run_for(owner.as_str(), move |store| store.pep_items(&user, &read_node, max)).await;
    let found = match read {
        Ok(Some(found)) => found,
        Ok(None) => return request.error(StanzaErrorCondition::ItemNotFound),
        Err(_) => return request.error(StanzaErrorCondition::InternalServerError),
    };
    let allowed = is_owner
        || found.access == "open"
        || (found.access == "presence" && subscribed(&core, &owner, request.requester_bare()).await);
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

/// Is `contact` subscribed to `owner`'s presence?
async fn subscribed(core: &Core, owner: &BareJid, contact: &str) -> bool {
    let allowed = match crate::account::load(core, owner).await {
        Ok(account) => account.borrow().roster.item(contact).is_some_and(|i| i.subscription.from()),
        Err(_) => false,
    };
    crate::account::release(core, owner.as_str());
    allowed
}

/// XEP-0163 section 6.2: a session whose notify list just became known gets the last
/// item of each node it wants, from its own account and each contact it follows.
pub(crate) fn send_last_items(core: &Core, full: &str, user: &BareJid, sources: Vec<String>, notify: Notify) {
    let core = core.rc();
    let full = full.to_owned();
    let user = user.clone();
    crate::contain::spawn(core.clone(), "a personal eventing request", async move {
        for contact in std::iter::once(user.as_str().to_owned()).chain(sources) {
            let Ok(owner) = contact.parse::<BareJid>() else { continue };
            let own = owner == user;
            let nodes: Vec<String> = notify.iter().map(|n| n.to_string()).collect();
            let reader = owner.clone();
            let read = core.shared.db.run_for(owner.as_str(), move |store| {
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
            let mailbox = core.sessions.borrow().session(&full).map(|s| s.mailbox.clone());
            let Some(mailbox) = mailbox else { return };
            for item in &items {
                let mut event = Vec::new();
                write_event(owner.as_str(), &full, item, &mut event);
                core.push(&mailbox, &event);
            }
        }
    });
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
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
